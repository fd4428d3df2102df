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


def _install_pkg_resources_shim() -> None:
    try:
        import pkg_resources  # noqa: F401
        return
    except ImportError:
        pass
    import importlib.resources as ir

    shim = types.ModuleType("pkg_resources")

    def resource_stream(package: str, resource: str):
        return ir.files(package).joinpath(resource).open("rb")

    shim.resource_stream = resource_stream  # type: ignore[attr-defined]
    shim.__d4k_shim__ = True  # type: ignore[attr-defined]
    sys.modules["pkg_resources"] = shim


def import_pytorch_wavelets():
    """``pytorch_wavelets`` (raises ImportError if it is not installed)."""
    _install_pkg_resources_shim()
    return importlib.import_module("pytorch_wavelets")


def optional(name: str) -> Optional[types.ModuleType]:
    """The module, or None when it is not installed (peers are optional in benchmarks)."""
    try:
        if name == "pytorch_wavelets":
            return import_pytorch_wavelets()
        return importlib.import_module(name)
    except ImportError:
        return None
