"""Importing the peer libraries used as references in tests and as rivals in benchmarks.

pytorch_wavelets 1.3.0 imports ``pkg_resources`` (for its DTCWT coefficient files), which
setuptools >= 81 no longer ships. :func:`import_pytorch_wavelets` installs a minimal stand-in
(``resource_stream`` over importlib.resources) when the real one is missing; nothing else of
pkg_resources is used by it.
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import Optional


def _pkg_resources_shim() -> Optional[types.ModuleType]:
    """A stand-in module when the real pkg_resources is missing, else None."""
    try:
        import pkg_resources  # noqa: F401
        return None
    except ImportError:
        pass
    import importlib.resources as ir

    shim = types.ModuleType("pkg_resources")

    def resource_stream(package: str, resource: str):
        return ir.files(package).joinpath(resource).open("rb")

    shim.resource_stream = resource_stream  # type: ignore[attr-defined]
    shim.__d4k_shim__ = True  # type: ignore[attr-defined]
    return shim


def import_pytorch_wavelets():
    """``pytorch_wavelets`` (raises ImportError if it is not installed).

    The stand-in is in ``sys.modules`` only while pytorch_wavelets is imported (its modules bind
    ``resource_stream`` at import): left there, it would fool code that probes for the real
    pkg_resources (pytest's ``monkeypatch.syspath_prepend`` calls its ``fixup_namespace_packages``)."""
    if "pytorch_wavelets" in sys.modules:
        return sys.modules["pytorch_wavelets"]
    shim = _pkg_resources_shim()
    if shim is None:
        return importlib.import_module("pytorch_wavelets")
    sys.modules["pkg_resources"] = shim
    try:
        return importlib.import_module("pytorch_wavelets")
    finally:
        if sys.modules.get("pkg_resources") is shim:
            del sys.modules["pkg_resources"]


def optional(name: str) -> Optional[types.ModuleType]:
    """The module, or None when it is not installed (peers are optional in benchmarks)."""
    try:
        if name == "pytorch_wavelets":
            return import_pytorch_wavelets()
        return importlib.import_module(name)
    except ImportError:
        return None
