"""What the exact tiler knows of a network: the checks, the halo, the stages and a walk of its windows.

The planner (vae/tiling/planner.py) sizes tiles from a *structure*: any object with the attributes of
:class:`TileStructure`. :class:`DecoderStructure` is the one for a diffusers AutoencoderKL-family
decoder (``vae.decoder``: Flux, SD3, SDXL, SD1.x, the SC-VAE): :func:`check_decoder` says whether it
can be tiled exactly; walking its up path backwards from the output gives the halo (the receptive field,
13 latent pixels for Flux / SD3 / SDXL and the SC-VAE F16) and, per resolution, the widest tensor and
the context it still needs; :meth:`DecoderStructure.walk` replays a tile program
(vae/tiling/program.py) on windows only, for the parking simulation and the conv count. A tiled
encoder brings its own structure and program; the planner, the driver and the windows stay as they are.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator, List, Protocol, Tuple, Union

import torch.nn as nn

from .windows import Box, conv_range

__all__ = ["check_decoder", "required_halo", "up_conv", "Stage", "ConvStep", "ParkStep", "TileStructure",
           "DecoderStructure"]


def _check_conv3(conv, what):
    if not isinstance(conv, nn.Conv2d) or conv.kernel_size != (3, 3) or conv.stride != (1, 1) \
            or conv.padding != (1, 1) or conv.dilation != (1, 1) or conv.groups != 1 \
            or conv.padding_mode != "zeros":
        raise ValueError(f"exact tiling supports 3x3 stride-1 convs with zero padding 1 only; {what} is {conv!r}")


def _check_gn(norm, what):
    if not isinstance(norm, nn.GroupNorm):
        raise ValueError(f"exact tiling needs nn.GroupNorm layers; {what} is {type(norm).__name__}")


def _check_resnet(r, what):
    if getattr(r, "upsample", None) is not None or getattr(r, "downsample", None) is not None \
            or getattr(r, "time_emb_proj", None) is not None or not getattr(r, "pre_norm", True):
        raise ValueError(f"{what} ({type(r).__name__}) has up/down sampling, a time embedding or "
                         "post-norm: not supported")
    for n in ("norm1", "norm2"):
        _check_gn(getattr(r, n, None), f"{what}.{n}")
    _check_conv3(r.conv1, f"{what}.conv1")
    _check_conv3(r.conv2, f"{what}.conv2")
    sc = getattr(r, "conv_shortcut", None)
    if sc is not None and (not isinstance(sc, nn.Conv2d) or sc.kernel_size != (1, 1) or sc.stride != (1, 1)):
        raise ValueError(f"{what}.conv_shortcut must be a 1x1 conv, got {sc!r}")


def check_decoder(dec: nn.Module) -> None:
    """Raise ValueError unless ``dec`` is a decoder the exact tiler can tile."""
    for name in ("conv_in", "mid_block", "up_blocks", "conv_norm_out", "conv_act", "conv_out"):
        if not hasattr(dec, name):
            raise ValueError(f"{type(dec).__name__} is not a diffusers AutoencoderKL-style decoder (no {name!r})")
    _check_gn(dec.conv_norm_out, "decoder.conv_norm_out (SpatialNorm decoders are not supported)")
    _check_conv3(dec.conv_out, "decoder.conv_out")
    for i, block in enumerate(dec.up_blocks):
        if not hasattr(block, "resnets") or getattr(block, "attentions", None):
            raise ValueError(f"up_blocks[{i}] ({type(block).__name__}) is not supported: need resnets + "
                             "upsamplers and no attention (UpDecoderBlock2D)")
        for j, r in enumerate(block.resnets):
            _check_resnet(r, f"up_blocks[{i}].resnets[{j}]")
        ups = getattr(block, "upsamplers", None) or []
        if len(ups) > 1:
            raise ValueError(f"up_blocks[{i}] has {len(ups)} upsamplers; expected at most one")
        for u in ups:
            if getattr(u, "use_conv_transpose", False) or getattr(u, "norm", None) is not None \
                    or not getattr(u, "interpolate", True) or not getattr(u, "use_conv", False):
                raise ValueError(f"up_blocks[{i}].upsamplers[0] must be nearest x2 + conv (Upsample2D(use_conv=True))")
            _check_conv3(up_conv(u), f"up_blocks[{i}].upsamplers[0].conv")
    stride = getattr(dec, "stride", 1)
    if stride not in (1, 2):
        raise ValueError(f"decoder stride must be 1 or 2, got {stride!r}")


def up_conv(u: nn.Module) -> nn.Conv2d:
    """The conv of a diffusers Upsample2D."""
    return u.conv if getattr(u, "name", "conv") == "conv" else u.Conv2d_0


def upsamplers(block: nn.Module) -> List[nn.Module]:
    return list(getattr(block, "upsamplers", None) or [])


@dataclass(frozen=True)
class Stage:
    """One resolution of the tiled part: ``scale`` pixels there per input pixel, the channels of its
    widest tensor and the context (pixels at that scale) a tile still needs there."""

    scale: int
    channels: int
    margin: int


@dataclass(frozen=True)
class ConvStep:
    """A conv of a tile program: the area of its output window (per sample) and its weights' shape."""

    area: int
    cin: int
    cout: int
    taps: int

    @property
    def macs(self) -> int:
        return self.area * self.cin * self.cout * self.taps


@dataclass(frozen=True)
class ParkStep:
    """A tile program waits at a GroupNorm: the elements (per sample) of each tensor it parks, in order."""

    sizes: Tuple[int, ...]


Step = Union[ConvStep, ParkStep]


class TileStructure(Protocol):
    """What the planner and the decoder read of a tiled network (see :class:`DecoderStructure`)."""

    halo: int                    # context a tile needs at the input resolution (each side)
    scale: int                   # output pixels per input pixel
    stages: Tuple[Stage, ...]    # per resolution: widest tensor and context (a tile's working set)
    n_norms: int                 # GroupNorms a tile program stops at
    whole_channels: int          # channels of the whole-input tensor the tiles start from
    whole_factor: int            # peak of the whole-input phase, in multiples of that tensor
    out_channels: int

    def weight_bytes(self) -> int: ...

    def walk(self, window: Box, H: int, W: int) -> Iterator[Step]: ...


def _stage_info(dec: nn.Module, stride: int, partitioned: bool) -> Tuple[int, List[Stage]]:
    """Walk the up path backwards from the output: (halo, stages), ``halo`` the context a tile needs at
    the latent resolution, ``stages`` the widest tensor and the context it still needs, per resolution."""
    blocks = list(dec.up_blocks)
    s = 2 ** sum(1 for blk in blocks if upsamplers(blk))
    c0 = dec.conv_norm_out.num_channels
    stages = []
    if stride == 2:
        b, a = (2, 0) if partitioned else (1, 1)
        stages.append(Stage(2 * s, max(c0, dec.conv_out.out_channels), max(b, a)))
        b, a = math.ceil(b / 2), math.ceil(a / 2)
    else:
        b, a = 1, 1
    for blk in reversed(blocks):
        c_out = blk.resnets[-1].conv2.out_channels
        if upsamplers(blk):
            b, a = b + 1, a + 1
            stages.append(Stage(s, c_out, max(b, a)))  # the upsampled tensor (and its conv)
            b, a = math.ceil(b / 2), math.ceil(a / 2)
            s //= 2
        n = 2 * len(blk.resnets)
        b, a = b + n, a + n
        c_in = blk.resnets[0].conv1.in_channels
        stages.append(Stage(s, max(c_in, c_out), max(b, a)))
    return max(b, a), stages[::-1]


@dataclass(frozen=True)
class DecoderStructure:
    """The :class:`TileStructure` of a diffusers AutoencoderKL-family decoder: post_quant_conv, conv_in
    and the mid-block run on the whole latent (``whole_*``), the up path and the tail in tiles."""

    module: nn.Module = field(repr=False, compare=False)
    halo: int
    scale: int
    stages: Tuple[Stage, ...]
    n_norms: int
    whole_channels: int
    out_channels: int
    stride: int = 1              # 2: the SC-VAE tail (one more nearest x2 at the end)
    partitioned: bool = True     # the SC-VAE tail's padding (top / left 2) instead of 1 all round
    # the mid-block's peak (temporaries and attention workspace) over its activation: measured on an
    # H200, Flux bf16 at a 512^2 latent with ``measure_memory``: 8.24 x; 9 x keeps an ~8% margin
    whole_factor: int = 9

    @classmethod
    def of(cls, dec: nn.Module) -> "DecoderStructure":
        check_decoder(dec)
        stride, part = getattr(dec, "stride", 1), bool(getattr(dec, "partitioned", True))
        halo, stages = _stage_info(dec, stride, part)
        ups = sum(1 for b in dec.up_blocks if upsamplers(b))
        return cls(dec, halo, 2 ** ups * stride, tuple(stages), 2 * sum(len(b.resnets) for b in dec.up_blocks) + 1,
                   dec.conv_in.out_channels, dec.conv_out.out_channels, stride, part)

    def weight_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.module.parameters())

    def walk(self, window: Box, H: int, W: int) -> Iterator[Step]:
        """The convs and the parked state of the decoder's tile program (program.decoder_program) on a
        tile whose first window (at the latent resolution, of H x W) is ``window``, without tensors."""
        y, x = window[:2], window[2:]

        def conv(r, n):
            return conv_range(r[0], r[1], n, 1)[:2]

        def area(a, b):
            return (a[1] - a[0]) * (b[1] - b[0])

        for block in self.module.up_blocks:
            for r in block.resnets:
                cin, cout = r.conv1.in_channels, r.conv1.out_channels
                yield ParkStep((cin * area(y, x),))  # norm1: the block input
                y, x = conv(y, H), conv(x, W)
                yield ConvStep(area(y, x), cin, cout, 9)
                if r.conv_shortcut is not None:  # the 1x1 shortcut on the residual, cropped to conv1's window
                    yield ConvStep(area(y, x), cin, cout, 1)
                c_res = cout if r.conv_shortcut is not None else cin
                yield ParkStep((c_res * area(y, x), cout * area(y, x)))  # norm2: the residual, conv1's output
                y, x = conv(y, H), conv(x, W)
                yield ConvStep(area(y, x), cout, cout, 9)
            for u in upsamplers(block):
                H, W = 2 * H, 2 * W
                y, x = conv((2 * y[0], 2 * y[1]), H), conv((2 * x[0], 2 * x[1]), W)
                c = up_conv(u).in_channels
                yield ConvStep(area(y, x), c, c, 9)
        c0, co = self.module.conv_out.in_channels, self.out_channels
        yield ParkStep((self.module.conv_norm_out.num_channels * area(y, x),))  # conv_norm_out
        if self.stride == 1:
            y, x = conv(y, H), conv(x, W)
            yield ConvStep(area(y, x), c0, co, 9)
        else:  # the torch tail convolves the tile's whole 2x grid
            yield ConvStep(4 * area(y, x), c0, co, 9)


def required_halo(dec: nn.Module) -> int:
    """Latent pixels of context a tile needs on each side: the up path's receptive field (13 for
    Flux / SD3 / SDXL and for the SC-VAE F16), computed from the decoder's layers."""
    return DecoderStructure.of(dec).halo
