"""The network-agnostic parts of the exact tiler (d4k_kernels/vae/tiling): windows, driver, planner.

Each is checked on its own, without a diffusers decoder: the window rule against F.conv2d on the
whole tensor (stride 1 and 2, symmetric and asymmetric padding, as a tiled encoder needs them), the
layer-synchronous driver with a tile program that is not the decoder's, and the planner with a
structure that is not a decoder's.
"""
import itertools
from dataclasses import dataclass
from typing import Tuple

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from d4k_kernels.vae.tiling.driver import run_tiles
from d4k_kernels.vae.tiling.ops import TORCH_OPS
from d4k_kernels.vae.tiling.parking import Store
from d4k_kernels.vae.tiling.planner import conv_macs, make_plan, simulate_parking
from d4k_kernels.vae.tiling.program import norm_request
from d4k_kernels.vae.tiling.structure import ConvStep, ParkStep, Stage
from d4k_kernels.vae.tiling.windows import Tile, conv_range, conv_tile, halo_window, partition


@pytest.mark.parametrize("stride,pad", [(1, (1, 1)), (2, (1, 1)), (2, (0, 1))])
def test_conv_tile_equals_the_whole_conv(seed, stride, pad):
    """Every window a tile can have (cores on the stride grid, halos of 0-3) computes exactly the rows
    and columns conv_range says, equal to the same part of the whole tensor's conv."""
    H, W = 11, 8
    conv = nn.Conv2d(3, 2, 3, stride=stride, padding=0 if pad != (1, 1) else 1).double()
    u = torch.randn(1, 3, H, W, dtype=torch.float64)
    whole = F.conv2d(F.pad(u, (pad[0], pad[1], pad[0], pad[1])), conv.weight, conv.bias, stride=stride)
    cores = [(y0, y1, x0, x1) for (y0, y1), (x0, x1) in itertools.product(partition(H, 2 * stride),
                                                                         partition(W, 2 * stride))]
    n_checked = 0
    for core, halo in itertools.product(cores, range(4)):
        win = halo_window(core, halo, H, W)
        x = Tile(u[..., win[0]:win[1], win[2]:win[3]], *win, H, W, core)
        try:
            y = conv_tile(x, conv, pad=pad)
        except RuntimeError as e:  # a window too small for the conv, or a core off its own output
            assert "halo" in str(e)
            continue
        assert (y.H, y.W) == tuple(whole.shape[-2:])
        torch.testing.assert_close(y.t, whole[..., y.y0:y.y1, y.x0:y.x1], rtol=0, atol=1e-12)
        n_checked += 1
    assert n_checked > len(cores)


def test_conv_range_stride_one_rule():
    """The 3-tap stride-1 rule the decoder uses: one row less on each side that is not the border."""
    assert conv_range(0, 10, 10, 1) == (0, 10, 0, 10, 1, 1)
    assert conv_range(3, 8, 10, 1) == (4, 7, 3, 8, 0, 0)
    assert conv_range(3, 10, 10, 1)[:2] == (4, 10)
    assert conv_range(4, 10, 10, 2)[:2] == (6, 10)  # top padding 2 (the SC-VAE tail): reach 2 upwards
    with pytest.raises(RuntimeError, match="too small"):
        conv_range(3, 5, 10, 1)


def test_driver_normalises_every_tile_with_the_whole_statistics(seed):
    """A tile program that is not the decoder's (two GroupNorms with a ReLU between, no convs): the
    driver runs it layer-synchronously and every tile gets the statistics of the whole tensor, so the
    tiles assemble into F.group_norm of the whole, with the state parked on the host (budget 0)."""
    x = torch.randn(2, 6, 9, 7) * 3 + 1
    norms = [nn.GroupNorm(3, 6), nn.GroupNorm(2, 6)]
    for n in norms:
        nn.init.normal_(n.weight)
        nn.init.normal_(n.bias)

    def program(t):
        for n in norms:
            live = [t]
            mean, rstd = yield norm_request(TORCH_OPS, t, n, live)
            t = live[0]
            t = t.same(torch.relu(TORCH_OPS.apply(t.t, mean, rstd, n.weight, n.bias, n.num_groups)))
        return t

    cores = [(y0, y1, x0, x1) for (y0, y1) in partition(9, 4) for (x0, x1) in partition(7, 3)]
    out = torch.full_like(x, float("nan"))

    def emit(t):
        out[..., t.cy0:t.cy1, t.cx0:t.cx1] = t.core()

    store = Store(x.device, 0)
    with torch.no_grad():
        run_tiles([program(Tile.of(x, c, 0)) for c in cores], TORCH_OPS.finalize, store, emit)
        want = x
        for n in norms:
            want = torch.relu(n(want))
    assert store.ledger.offloaded > 0 and store.ledger.on_host == 0
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


@dataclass(frozen=True)
class _Strip:
    """A toy structure: one GroupNorm then one 3x3 conv, at the input resolution."""

    halo: int = 1
    scale: int = 1
    stages: Tuple[Stage, ...] = (Stage(1, 4, 1),)
    n_norms: int = 1
    whole_channels: int = 4
    whole_factor: int = 1
    out_channels: int = 4

    def weight_bytes(self):
        return 0

    def walk(self, window, H, W):
        y0, y1, x0, x1 = window
        yield ParkStep((4 * (y1 - y0) * (x1 - x0),))
        ly, hy = conv_range(y0, y1, H)[:2]
        lx, hx = conv_range(x0, x1, W)[:2]
        yield ConvStep((hy - ly) * (hx - lx), 4, 4, 9)


def test_planner_takes_any_structure():
    """The planner reads only the structure's attributes and walk: the parking simulation and the conv
    count of a toy structure are what its walk says."""
    st = _Strip()
    plan = make_plan(st, (1, 4, 10, 10), torch.float32, tile=5, budget=2**30)
    assert plan.n_tiles == 4 and plan.halo == 1
    # each tile parks its window once: 6 x 6 px of 4 channels (4 bytes each), all four at once
    assert (plan.est_state, plan.est_host, plan.est_offload) == (4 * 4 * 36 * 4, 0, 0)
    assert simulate_parking(st, (1, 4, 10, 10), plan.tiles, 1, 4, 0) == (4 * 4 * 36 * 4,) * 3
    assert conv_macs(st, (1, 4, 10, 10)) == 100 * 4 * 4 * 9
    assert conv_macs(st, (2, 4, 10, 10), tile=5) == 2 * 100 * 4 * 4 * 9  # the toy conv needs no halo
