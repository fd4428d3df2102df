"""The paper's GLCM Score as its eval.py computes it: a per-patch skimage loop.

This is the independent oracle for tests and the peer in benchmarks. It shares no code with
d4k_kernels.ops.glcm: per patch, ``skimage.feature.graycomatrix(..., normed=True)`` and
``skimage.measure.shannon_entropy`` (the entropy of how often each distinct VALUE occurs among the
levels*levels*slices cells; docs/ops.md, GLCM Score and Compression Ratio), mean over patches.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

PAPER_DISTANCES = (1, 2, 3, 4)
PAPER_ANGLES = (0.0, math.pi / 4, math.pi / 2, 3 * math.pi / 4)


def _skimage():
    from skimage.feature import graycomatrix, graycoprops
    from skimage.measure import shannon_entropy

    return graycomatrix, graycoprops, shannon_entropy


def patch_grid(q: np.ndarray, patch: int):
    """Non-overlapping patch x patch patches of a 2-D array, row-major order."""
    h, w = q.shape
    for r in range(0, h - h % patch, patch):
        for c in range(0, w - w % patch, patch):
            yield q[r:r + patch, c:c + patch]


def patch_scores(
    gray: np.ndarray,
    size: int = 2048,
    patch: int = 64,
    levels: int = 64,
    distances: Sequence[float] = PAPER_DISTANCES,
    angles: Sequence[float] = PAPER_ANGLES,
    max_patches: Optional[int] = None,
) -> np.ndarray:
    """Per-patch scores of one 8-bit gray image (H, W), the paper's loop (float64, row-major)."""
    graycomatrix, _, shannon_entropy = _skimage()
    gray = np.asarray(gray)
    if gray.ndim != 2:
        raise ValueError(f"gray must be 2-D, got shape {gray.shape}")
    if gray.shape[0] < size or gray.shape[1] < size:
        raise ValueError(f"image {gray.shape[0]}x{gray.shape[1]} is smaller than size {size}")
    q = (gray[:size, :size].astype(np.int32) // (256 // levels)).astype(np.uint8)
    out = []
    for i, p in enumerate(patch_grid(q, patch)):
        if max_patches is not None and i >= max_patches:
            break
        g = graycomatrix(p, distances=list(distances), angles=list(angles), levels=levels,
                         symmetric=False, normed=True)
        out.append(shannon_entropy(g))
    return np.asarray(out, dtype=np.float64)


def glcm_score(gray: np.ndarray, size: int = 2048, patch: int = 64, levels: int = 64, **kw) -> float:
    """The paper's image score: mean of the per-patch scores."""
    return float(np.mean(patch_scores(gray, size=size, patch=patch, levels=levels, **kw)))


def glcm_counts(
    q: np.ndarray,
    patch: int,
    distances: Sequence[float],
    angles: Sequence[float],
    levels: int,
    symmetric: bool = False,
) -> np.ndarray:
    """skimage counts per patch of one quantised image: (P, nd, na, levels, levels) int64."""
    graycomatrix, _, _ = _skimage()
    q = np.asarray(q)
    res = []
    for p in patch_grid(q, patch):
        g = graycomatrix(np.ascontiguousarray(p), distances=list(distances), angles=list(angles),
                         levels=levels, symmetric=symmetric, normed=False)
        res.append(np.transpose(g, (2, 3, 0, 1)).astype(np.int64))
    return np.stack(res)


def graycoprops(counts: np.ndarray, prop: str) -> np.ndarray:
    """skimage graycoprops over counts shaped (..., nd, na, L, L) -> (..., nd, na) float64."""
    _, gp, _ = _skimage()
    counts = np.asarray(counts)
    lead = counts.shape[:-4]
    flat = counts.reshape((-1,) + counts.shape[-4:])
    out = [gp(np.transpose(c, (2, 3, 0, 1)), prop) for c in flat]
    return np.stack(out).reshape(lead + counts.shape[-4:-2])
