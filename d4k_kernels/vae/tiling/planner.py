"""The tile plan: the tile size from a memory budget, the byte estimates behind it, the parking simulation.

The memory model of a tiled decode has three parts: the whole-input phase (weights, the mid-block on
the whole latent and its temporaries, the output image: ``est_fixed``), the working set of one tile
step (``est_tile``, from the structure's stages), and the tile state parked between GroupNorms
(``est_state``; what does not fit the device budget goes to host memory). :func:`plan_tiles` picks the
largest tile whose working set fits half of what the budget leaves after the fixed part;
:func:`simulate_parking` replays the driver's parking on the structure's walk (no tensors), through
the same :class:`~.parking.ParkLedger` the decode uses, so ``est_state`` / ``est_host`` /
``est_offload`` are exactly what the decode does. Everything here reads a structure
(vae/tiling/structure.py), not a decoder: a tiled encoder plans with the same code.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..._checks import check_int
from ..._util import parse_memory
from .parking import ParkLedger
from .structure import ConvStep, DecoderStructure, ParkStep, TileStructure
from .windows import Box, halo_window, partition

__all__ = ["TilePlan", "DEFAULT_MAX_MEMORY", "MIN_AUTO_TILE", "plan_tiles", "make_plan", "structure_of",
           "estimate_tile_bytes", "estimate_fixed_bytes", "simulate_parking", "conv_macs", "host_available",
           "warn_if_host_short"]

DEFAULT_MAX_MEMORY = 8 * 2**30  # 8 GiB
MIN_AUTO_TILE = 32  # latent pixels: the smallest tile the memory planner picks (halo 13 on each side)


@dataclass
class TilePlan:
    tile: int                   # core size in latent pixels
    halo: int                   # latent pixels of context on each side
    tiles: List[Box]            # latent cores (y0, y1, x0, x1)
    budget: Optional[int]       # bytes, None = unbounded
    est_fixed: int              # bytes: weights + whole-latent mid-block + output image (mid-block phase)
    est_tile: int               # bytes: working set of one tile
    state_budget: Optional[int]  # bytes of parked state allowed on the device
    est_state: int = 0          # bytes: the most tile state parked at once (device + host)
    est_host: int = 0           # bytes: the most of it in (pinned) host memory at once
    est_offload: int = 0        # bytes: moved to the host over the whole decode (and back)
    est_resident: int = 0       # bytes held through the tile phase: weights + mid-block output + image
    z_shape: Tuple[int, ...] = ()  # the latent shape the plan is for

    @property
    def n_tiles(self) -> int:
        return len(self.tiles)


def structure_of(net: Union[nn.Module, TileStructure]) -> TileStructure:
    """A decoder's :class:`~.structure.DecoderStructure`; a structure is returned as it is."""
    return DecoderStructure.of(net) if isinstance(net, nn.Module) else net


def estimate_tile_bytes(net, n: int, tile: int, halo: int, itemsize: int) -> int:
    """Peak working bytes of one tile: at each resolution, the widest activation over the tile's
    window there (s * tile + 2 * the context still needed, plus the extra halo given) times a factor
    that covers the input, the fp32 GroupNorm temporaries, the conv output and the residual."""
    st = structure_of(net)
    extra = max(0, halo - st.halo)
    peak = 0
    for stage in st.stages:
        side = stage.scale * (tile + 2 * extra) + 2 * stage.margin
        peak = max(peak, n * stage.channels * side * side * (4 * itemsize + 8))
    return peak


def estimate_fixed_bytes(net, z_shape, itemsize: int, out_itemsize: Optional[int] = None,
                         resident: bool = False) -> int:
    """Peak bytes of the whole-input phase: the weights, the whole-input part (``whole_factor`` x its
    activation, covering its temporaries and attention workspace) and the output image.
    ``resident=True``: what stays allocated through the tile phase instead, where the whole-input
    part's temporaries are gone: the weights, its output (the tiles' first windows are views of it) and
    the output image."""
    st = structure_of(net)
    n, _, h, w = z_shape
    whole = (1 if resident else st.whole_factor) * n * st.whole_channels * h * w * itemsize
    out = n * st.out_channels * h * w * st.scale * st.scale * (out_itemsize or itemsize)
    return st.weight_bytes() + whole + out


def _cores(h: int, w: int, tile: int) -> List[Box]:
    return [(y0, y1, x0, x1) for (y0, y1) in partition(h, tile) for (x0, x1) in partition(w, tile)]


def _walks(st: TileStructure, z_shape, tiles: Sequence[Box], halo: int):
    _, _, H, W = z_shape
    return [st.walk(halo_window(core, halo, H, W), H, W) for core in tiles]


def simulate_parking(net, z_shape, tiles: Sequence[Box], halo: int, itemsize: int,
                     device_bytes: Optional[int]) -> Tuple[int, int, int]:
    """(peak parked, peak in host memory, bytes moved to the host) of a decode, exactly as the driver
    and its Store do it: at each GroupNorm the tiles resume in order (a tile takes its state back,
    runs, parks its new state tensor by tensor), each tensor placed by the same ParkLedger."""
    n = z_shape[0]
    sizes = [[step.sizes for step in walk if isinstance(step, ParkStep)]
             for walk in _walks(structure_of(net), z_shape, tiles, halo)]
    ledger = ParkLedger(device_bytes)
    held: List[List[Tuple[int, bool]]] = [[] for _ in sizes]  # per tile: (bytes, on host) of its parked tensors
    for k in range(len(sizes[0]) if sizes else 0):
        for i, tile_steps in enumerate(sizes):
            for nb, host in held[i]:
                ledger.release(nb, host)
            held[i] = [(n * el * itemsize, ledger.park(n * el * itemsize)) for el in tile_steps[k]]
    return ledger.peak_parked, ledger.peak_host, ledger.offloaded


def conv_macs(net, z_shape, tile: Optional[int] = None, halo: Optional[int] = None) -> int:
    """Multiply-adds of the tiled part's convs (torch tail) for a tiled decode with ``tile`` (None:
    untiled), from the same window bookkeeping as the decoder: ``conv_macs(d, s, t) / conv_macs(d, s)``
    - 1 is the halo-recompute overhead."""
    st = structure_of(net)
    n, _, h, w = z_shape
    halo = st.halo if halo is None else halo
    tiles = _cores(h, w, max(h, w) if tile is None else tile)
    return n * sum(step.macs for walk in _walks(st, z_shape, tiles, halo) for step in walk
                   if isinstance(step, ConvStep))


def _default_budget(device: Optional[torch.device]) -> int:
    """8 GiB; on CUDA at most 90% of the free memory plus what is allocated already."""
    budget = DEFAULT_MAX_MEMORY
    if device is not None and device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = min(budget, int(free * 0.9) + torch.cuda.memory_allocated(device))
    return budget


def _auto_tile(st: TileStructure, n: int, side: int, halo: int, itemsize: int, avail: int) -> int:
    """The largest tile (in steps of 8) whose working set fits half of ``avail``, balanced so that the
    last strip is not thin."""
    tile = min(MIN_AUTO_TILE, side)  # smaller tiles would mostly recompute halos
    for cand in range(tile + 8, side + 8, 8):
        # half of what is left for one tile's working set, the rest for parked state
        if estimate_tile_bytes(st, n, min(cand, side), halo, itemsize) <= avail / 2:
            tile = min(cand, side)
        else:
            break
    per_side = -(-side // tile)
    return -(-side // per_side)  # same number of tiles, balanced sizes (no thin last strip)


def make_plan(net, z_shape, dtype: torch.dtype, *, tile: Optional[int] = None, budget: Optional[int] = None,
              halo: Optional[int] = None, device: Optional[torch.device] = None) -> TilePlan:
    """The plan for a latent of ``z_shape``: ``budget`` in bytes (None: :func:`_default_budget`), the
    tile from it unless ``tile`` is given, ``halo`` at least the structure's."""
    st = structure_of(net)
    n, _, h, w = z_shape
    halo = st.halo if halo is None else check_int(halo, "halo", lo=st.halo)
    itemsize = torch.empty((), dtype=dtype).element_size()
    if budget is None:
        budget = _default_budget(device)
    fixed = estimate_fixed_bytes(st, z_shape, itemsize)
    if tile is None:
        avail = budget - fixed
        tile = _auto_tile(st, n, max(h, w), halo, itemsize, avail)
        if estimate_tile_bytes(st, n, tile, halo, itemsize) > avail:
            warnings.warn(f"max_memory={budget} bytes is probably too small for an exact tiled decode of a "
                          f"{tuple(z_shape)} latent (estimated fixed {fixed} + tile "
                          f"{estimate_tile_bytes(st, n, tile, halo, itemsize)} bytes); using tile={tile}")
        tile = min(tile, max(h, w))
    check_int(tile, "tile", lo=1)
    est_tile = estimate_tile_bytes(st, n, tile, halo, itemsize)
    # parked state lives in the tile phase, next to what stays resident and one tile's working set; the
    # mid-block's temporaries (in est_fixed) are freed before it starts, so they do not count against it
    resident = estimate_fixed_bytes(st, z_shape, itemsize, resident=True)
    state_budget = max(0, budget - resident - est_tile)
    tiles = _cores(h, w, tile)
    est_state, est_host, est_offload = simulate_parking(st, z_shape, tiles, halo, itemsize, state_budget)
    return TilePlan(tile, halo, tiles, budget, fixed, est_tile, state_budget, est_state, est_host, est_offload,
                    resident, tuple(z_shape))


def plan_tiles(dec, z_shape, dtype: torch.dtype, *, tile: Optional[int] = None, max_memory=None,
               halo: Optional[int] = None, device: Optional[torch.device] = None) -> TilePlan:
    """Choose the tile size (latent pixels) from ``max_memory`` (bytes or "8GiB"; default 8 GiB, on CUDA
    at most the free memory) unless ``tile`` is given, and list the tiles of a ``z_shape`` latent."""
    return make_plan(dec, tuple(z_shape), dtype, tile=tile, budget=parse_memory(max_memory), halo=halo,
                     device=device)


def host_available() -> Optional[int]:
    """MemAvailable of /proc/meminfo in bytes (None where that file does not exist)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def warn_if_host_short(plan: TilePlan) -> bool:
    """Warn (and return True) when the state the plan parks in pinned host memory, with room for
    the caching host allocator's rounding, exceeds the host memory available now."""
    if plan.est_host <= 0:
        return False
    avail = host_available()
    if avail is None or 1.25 * plan.est_host <= avail:
        return False
    warnings.warn(
        f"exact tiled decode of a {plan.z_shape} latent: {plan.est_host / 2**30:.1f} GiB of tile state will "
        f"be parked in pinned host memory at the worst GroupNorm (max_memory={plan.budget / 2**30:.1f} GiB keeps "
        f"{plan.state_budget / 2**30:.1f} GiB of it on the GPU), but only {avail / 2**30:.1f} GiB of host memory "
        f"is available: the process may be killed for memory. Give a larger max_memory, or free host memory.",
        ResourceWarning, stacklevel=3)
    return True
