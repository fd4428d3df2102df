"""GLCM Score benchmarks: d4k (on CUDA: what glcm_score picks, the CUDA score kernel, the Triton dot and
hist kernels, the torch fallback; on the CPU: compiled C++ at 1 and 2 threads and the torch fallback)
beside the paper's skimage loop (graycomatrix + shannon_entropy per 64x64 patch).

The skimage loop runs on the whole image where that takes a few seconds (CPU shapes); on CUDA shapes
it runs on a subset of the patches and the group/impl name says so (multiply by the stated factor for
the whole image)."""
from __future__ import annotations

from typing import List

import numpy as np
import torch

from . import Case


def _natural(size: int, n: int = 1, seed: int = 0) -> np.ndarray:
    """skimage sample images (8-bit gray) tiled to size x size; n images shifted apart (a smooth
    synthetic texture when scikit-image is not installed)."""
    try:
        from skimage import data

        cam = data.camera()
        ast = data.astronaut()
        ag = ((ast[..., 0].astype(np.int32) * 9798 + ast[..., 1].astype(np.int32) * 19235
               + ast[..., 2].astype(np.int32) * 3735 + 16384) >> 15).astype(np.uint8)
        tile = np.concatenate([cam, ag], 1)
    except ImportError:
        yy, xx = np.mgrid[0:512, 0:1024]
        rng = np.random.default_rng(seed)
        tile = (128 + 60 * np.sin(yy / 23.0) * np.cos(xx / 31.0) + rng.normal(0, 6, yy.shape)).clip(0, 255)
        tile = tile.astype(np.uint8)
    reps = -(-size // 512) + 1
    big = np.tile(tile, (reps, reps))
    return np.stack([np.ascontiguousarray(big[(37 * i) % 512:(37 * i) % 512 + size, (53 * i) % 512:(53 * i) % 512 + size])
                     for i in range(n)])


def _skimage_case(group: str, imgs: np.ndarray, size: int, max_patches, label: str,
                  work_fraction: float = 1.0) -> List[Case]:
    try:
        from ..reference.glcm import patch_scores
        import skimage  # noqa: F401
    except ImportError:
        return []

    def fn():
        for im in imgs:
            patch_scores(im, size=size, max_patches=max_patches)

    return [Case(group, label, fn, note="the paper's per-patch skimage loop", graph=False,  # CPU work
                 work_fraction=work_fraction)]


def _threads(n: int, f):
    def fn():
        old = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            return f()
        finally:
            torch.set_num_threads(old)

    return fn


def cases(device: torch.device, quick: bool = False) -> List[Case]:
    from .. import backend, settings
    from ..ops import glcm as G

    out: List[Case] = []
    plan = G._plan(64, tuple(G.offsets_of(G.PAPER_DISTANCES, G.PAPER_ANGLES)), 64)   # the paper's
    if device.type == "cuda":
        shapes = [(1, 512)] if quick else [(1, 4096), (16, 2048)]
        for n, size in shapes:
            imgs = _natural(size, n)
            x = torch.from_numpy(imgs).to(device)
            npatch = n * (size // 64) ** 2
            group = f"glcm_score {n}x{size}^2 uint8 ({npatch} patches)"
            nbytes = x.numel() + 8 * n

            def d4k(x=x, size=size):
                with backend.prefer("triton"):
                    return G.glcm_score(x, size=size)

            def fallback(x=x, size=size):
                with backend.prefer("cpu"):           # CUDA tensors: the vectorised torch path
                    return G.glcm_score(x, size=size)

            def variant(cuda, kernel="dot", g=1, x=x, size=size):
                """cuda=True: the CUDA score kernel; else the Triton kernel ``kernel`` (G offsets/program)."""
                def fn():
                    with settings.override(glcm_kernel=kernel, glcm_g=g, glcm_cuda=cuda), backend.prefer("triton"):
                        return G.glcm_score(x, size=size)
                return fn

            choice = G.cuda_choice(device, plan)       # builds the CUDA extension on first use
            picked = "CUDA kernel" if choice is not None else f"Triton {G.counting_kernel()} kernel"
            out.append(Case(group, "d4k", d4k, bytes_moved=nbytes,
                            note=f"what glcm_score runs: {picked} (D4K_GLCM_CUDA, D4K_GLCM_KERNEL)"))
            if choice is not None:
                out.append(Case(group, "d4k CUDA kernel", variant(True), bytes_moved=nbytes,
                                note=f"csrc/glcm_cuda.cu, {choice[1]} threads, "
                                     f"{16 if choice[2] else 32}-bit multiplicities"))
            else:
                from .._build import failure

                print(f"glcm bench: no CUDA kernel row ({failure('glcm_cuda') or 'disabled or does not fit'})")
            out.append(Case(group, "d4k triton dot", variant(False, "dot", 1), bytes_moved=nbytes,
                            note="one-hot int8 dot kernel"))
            out.append(Case(group, "d4k triton hist", variant(False, "hist", 1), bytes_moved=nbytes,
                            note="tl.histogram kernel"))
            out.append(Case(group, "d4k torch fallback (GPU)", fallback, bytes_moved=nbytes,
                            graph=False))  # copies a host table per call: not capturable
            sub = 64 if quick else 256
            out += _skimage_case(group, imgs[:1], size, sub,
                                 f"skimage loop, {sub} patches (x{npatch // sub} = this group)",
                                 work_fraction=sub / npatch)
        return out

    # CPU
    size = 256 if quick else 2048
    imgs = _natural(size, 1)
    x = torch.from_numpy(imgs)
    npatch = (size // 64) ** 2
    group = f"glcm_score 1x{size}^2 uint8 ({npatch} patches), CPU"
    nbytes = x.numel() + 8

    def cpp():
        with backend.prefer("cpu"):
            return G.glcm_score(x, size=size)

    have_cpp = backend.extension("glcm") is not None
    if have_cpp:
        out.append(Case(group, "d4k C++ 1 thread", _threads(1, cpp), bytes_moved=nbytes))
        out.append(Case(group, "d4k C++ 2 threads", _threads(2, cpp), bytes_moved=nbytes))
    tsize = min(size, 512)
    tx = x[:, :tsize, :tsize]
    scale = npatch // ((tsize // 64) ** 2)
    out.append(Case(group, "d4k torch fallback 1 thread" + (f", {tsize}^2 crop (x{scale})" if scale > 1 else ""),
                    _threads(1, lambda: G._torch_scores(tx, plan, 4)), bytes_moved=nbytes, work_fraction=1 / scale))
    out += _skimage_case(group, imgs, size, None, "skimage loop (whole image)")
    return out
