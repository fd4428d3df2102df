"""Exact tiled VAE decoding: the output equals the untiled decode, at a bounded device memory.

One job a module:

* ``structure``: which decoders can be tiled, their halo and stages, a walk of a tile's windows;
* ``windows``: a tile's window and core, and how a conv or nearest x2 moves them;
* ``program``: the per-tile program, a generator that stops at every GroupNorm;
* ``driver``: runs all tile programs layer-synchronously (whole-tensor GroupNorm statistics);
* ``parking``: keeps waiting tiles' state on the device or in pinned host memory;
* ``planner``: the tile size from a memory budget, byte estimates, the parking simulation;
* ``ops``: the GroupNorm / tail ops a program calls (torch, or the d4k kernels);
* ``decoder``: :class:`ExactTiledDecoder` and :func:`tiled_decode`, which put them together.

The program and the structure are the network-specific parts; the driver, the parking, the planner
and the windows serve any network built of 3x3 convs, nearest x2 and GroupNorms.
"""
from .decoder import ExactTiledDecoder, check_latent, tiled_decode
from .planner import DEFAULT_MAX_MEMORY, TilePlan, conv_macs, plan_tiles
from .structure import check_decoder, required_halo

__all__ = ["tiled_decode", "ExactTiledDecoder", "TilePlan", "plan_tiles", "required_halo", "conv_macs",
           "check_decoder", "check_latent", "DEFAULT_MAX_MEMORY"]
