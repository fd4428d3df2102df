"""The layer-synchronous driver: run every tile program to its next GroupNorm, reduce, resume.

:func:`run_tiles` takes any tile programs that follow the protocol of vae/tiling/program.py
(generators that yield a :class:`~.program.NormRequest` at each GroupNorm and return their output
tile). One *step*: each tile in turn takes its parked state back, runs to its next GroupNorm, hands over
its partial sums and parks its live state (vae/tiling/parking.py); then the partial sums of all tiles
are finalised into the (mean, rstd) of the whole tensor, which the next step sends to every tile. A tile
that returns hands its output to ``emit``. The driver knows nothing of decoders or encoders.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Generator, List, Optional, Sequence, Tuple

import torch

from .parking import Parked, Store
from .program import NormRequest
from .windows import Tile

__all__ = ["run_tiles"]

Program = Generator[NormRequest, Tuple[torch.Tensor, torch.Tensor], Tile]
Waiting = Tuple[List[Tile], List[Parked]]  # a waiting tile's live state and where it is parked


class _Reduction:
    """The partial sums of one GroupNorm over the tiles that reached it."""

    def __init__(self):
        self.total: Optional[torch.Tensor] = None
        self.count = 0
        self.norm = None

    def add(self, req: NormRequest) -> None:
        if self.norm is None:
            self.total, self.norm = req.stats, req.norm
        elif req.norm is not self.norm:
            raise AssertionError("tiles went out of step")
        else:
            self.total = self.total + req.stats
        self.count += req.count


def _resume(prog: Program, waiting: Optional[Waiting], stats, store: Store):
    """Run ``prog`` to its next GroupNorm (a NormRequest) or to its end (its output Tile)."""
    try:
        if waiting is None:
            return next(prog)
        live, handles = waiting
        for tl, hd in zip(live, handles):
            tl.t = store.unpark(hd)
        return prog.send(stats)
    except StopIteration as stop:
        return stop.value


def _park(req: NormRequest, store: Store) -> Waiting:
    """Park a tile's live state until every tile has reached this GroupNorm."""
    handles = [store.park(tl.t) for tl in req.live]
    for tl in req.live:
        tl.t = None
    return req.live, handles


def run_tiles(programs: Sequence[Program], finalize: Callable, store: Store, emit: Callable[[Tile], None], *,
              bar=None, meter: Optional[Callable[[], contextlib.AbstractContextManager]] = None) -> None:
    """Drive ``programs`` layer-synchronously to their ends (see the module doc).

    ``finalize(stats, count, eps) -> (mean, rstd)``; ``emit(tile)`` takes each output tile as it is
    done; ``bar``: a progress bar updated once per tile and step; ``meter()``: a context manager
    around each tile's run (memory measurement)."""
    waiting: List[Optional[Waiting]] = [None] * len(programs)
    stats = None
    while True:
        reduction = _Reduction()
        for i, prog in enumerate(programs):
            if i + 1 < len(programs) and waiting[i + 1] is not None:
                for hd in waiting[i + 1][1]:
                    store.prefetch(hd)  # the next tile's state comes back while this one runs
            with meter() if meter is not None else contextlib.nullcontext():
                got = _resume(prog, waiting[i], stats, store)
            waiting[i] = None
            if isinstance(got, NormRequest):
                reduction.add(got)
                waiting[i] = _park(got, store)
            else:
                emit(got)
            got = None
            if bar is not None:
                bar.update(1)
        if reduction.norm is None:
            return
        stats = finalize(reduction.total, reduction.count, reduction.norm.eps)
