"""GLCM Score and Compression Ratio of image files and folders, streamed.

:func:`evaluate_folder` decodes images in a thread pool (OpenCV and Pillow release the GIL) while
the main thread runs :func:`d4k_kernels.ops.glcm.glcm_score` on batches on the device. At most a
bounded window of decoded images exists at a time, so a folder of thousands of 4K images is never
held in memory; only the ``size x size`` gray crop of each image is kept (uint8).

Under ``torchrun`` (WORLD_SIZE > 1) the file list is sharded over the ranks (rank r takes files
r, r + W, ...), each rank evaluates its share on ``cuda:LOCAL_RANK`` (or the CPU), and the records
are merged with ``all_gather_object`` in the original file order; rank 0 reports.

Per image a :class:`ImageRecord`: file, width, height, file_bytes, glcm_score, compression_ratio
(this image's contribution ``size*size*3 / file_bytes``), status ("ok" / "skipped"), reason.
Unreadable, corrupt and too-small images are skipped with the reason; the run goes on.
"""
from __future__ import annotations

import collections
import csv
import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .. import backend as _backend, settings
from .._checks import check_choice, check_int
from .._util import resolve_device
from .gray import rgb_to_gray
from .io import ImageLoadError, import_cv2, list_images, load_image

__all__ = [
    "ImageRecord",
    "EvalResult",
    "evaluate_folder",
    "evaluate_files",
    "glcm_score_image",
    "glcm_score_files",
    "resolve_device",
]

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class ImageRecord:
    file: str
    width: Optional[int] = None
    height: Optional[int] = None
    file_bytes: Optional[int] = None
    glcm_score: Optional[float] = None
    compression_ratio: Optional[float] = None
    status: str = "ok"
    reason: str = ""
    rank: int = 0  # the torch.distributed rank that evaluated it


@dataclass
class EvalResult:
    """All records (file order), the settings, and the non-image files that were ignored."""

    records: List[ImageRecord]
    size: int
    patch: int
    ignored: List[str] = field(default_factory=list)
    world_size: int = 1
    seconds: float = 0.0  # wall time of the evaluation (this rank, gathering included)

    @property
    def ok(self) -> List[ImageRecord]:
        return [r for r in self.records if r.status == "ok"]

    @property
    def skipped(self) -> List[ImageRecord]:
        return [r for r in self.records if r.status != "ok"]

    @property
    def glcm_score(self) -> float:
        """Mean of the per-image GLCM scores (NaN when none was evaluated)."""
        ok = self.ok
        return math.fsum(r.glcm_score for r in ok) / len(ok) if ok else float("nan")

    @property
    def compression_ratio(self) -> float:
        """size*size*3 * n / sum(file bytes) over the evaluated images (NaN when none)."""
        ok = self.ok
        if not ok:
            return float("nan")
        return self.size * self.size * 3 * len(ok) / sum(r.file_bytes for r in ok)

    @property
    def compression_ratio_own_pixels(self) -> float:
        """sum(width*height*3) / sum(file bytes): the ratio with each image's own pixel count."""
        ok = self.ok
        if not ok:
            return float("nan")
        return sum(r.width * r.height * 3 for r in ok) / sum(r.file_bytes for r in ok)

    def summary_dict(self) -> dict:
        return {
            "glcm_score": self.glcm_score if self.ok else None,
            "compression_ratio": self.compression_ratio if self.ok else None,
            "compression_ratio_own_pixels": self.compression_ratio_own_pixels if self.ok else None,
            "evaluated": len(self.ok),
            "skipped": len(self.skipped),
            "ignored_non_images": len(self.ignored),
            "size": self.size,
            "patch": self.patch,
            "world_size": self.world_size,
            "seconds": self.seconds,
        }

    def summary(self) -> str:
        """The paper's format (``GLCM Score: 0.xxxx``, ``Compression Ratio: xx.xx``) plus counts."""
        lines = []
        if self.ok:
            lines.append(f"GLCM Score: {self.glcm_score:.4f}")
            lines.append(f"Compression Ratio: {self.compression_ratio:.2f}")
        n_other = sum(1 for r in self.ok if (r.width, r.height) != (self.size, self.size))
        if n_other:
            lines.append(
                f"note: {n_other} evaluated image(s) are not {self.size}x{self.size}; the Compression Ratio "
                f"counts {self.size}x{self.size}x3 bytes per image as the paper's eval.py "
                f"(with their own pixels it is {self.compression_ratio_own_pixels:.2f})")
        n_ok, n_sk = len(self.ok), len(self.skipped)
        lines.append(f"{n_ok} image{'s' if n_ok != 1 else ''} evaluated, {n_sk} skipped")
        for r in self.skipped:
            lines.append(f"  skipped {r.file}: {r.reason}")
        if self.ignored:
            n = len(self.ignored)
            lines.append(f"{n} non-image file{'s' if n != 1 else ''} ignored: " + ", ".join(
                os.path.basename(p) for p in self.ignored[:10]) + (" ..." if n > 10 else ""))
        return "\n".join(lines)

    def write_csv(self, path: PathLike) -> None:
        names = [f.name for f in fields(ImageRecord)]
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=names)
            w.writeheader()
            for r in self.records:
                d = asdict(r)
                w.writerow({k: ("" if v is None else (repr(v) if isinstance(v, float) else v)) for k, v in d.items()})

    def write_json(self, path: PathLike) -> None:
        with open(path, "w") as f:
            json.dump({"summary": self.summary_dict(), "images": [asdict(r) for r in self.records]}, f, indent=1)

    def write(self, path: PathLike) -> None:
        """CSV or JSON by the file name's extension (.csv / .json)."""
        p = os.fspath(path)
        ext = os.path.splitext(p)[1].lower()
        if ext == ".json":
            self.write_json(p)
        elif ext == ".csv":
            self.write_csv(p)
        else:
            raise ValueError(f"output file must end in .csv or .json, got {p!r}")


def _check_size_patch(size: int, patch: int) -> None:
    check_int(size, "size", lo=1)
    check_int(patch, "patch", lo=2)
    if size % patch:
        raise ValueError(f"size ({size}) must be a multiple of patch ({patch})")


def _prepare(path: str, size: int) -> Tuple[ImageRecord, Optional[np.ndarray]]:
    """Decode one file in a worker thread -> (record, gray top-left size x size crop or None)."""
    rec = ImageRecord(file=path)
    try:
        rec.file_bytes = os.path.getsize(path)
        img = load_image(path, order="bgr")
    except ImageLoadError as e:
        rec.status, rec.reason = "skipped", e.reason
        return rec, None
    except OSError as e:
        rec.status, rec.reason = "skipped", f"unreadable: {e}"
        return rec, None
    rec.height, rec.width = int(img.shape[0]), int(img.shape[1])
    if rec.height < size or rec.width < size:
        rec.status = "skipped"
        rec.reason = f"too small: {rec.width}x{rec.height} < {size}x{size}"
        return rec, None
    rec.compression_ratio = size * size * 3 / rec.file_bytes
    return rec, _gray_crop(img, size)


def _gray_crop(img_bgr: np.ndarray, size: int) -> np.ndarray:
    """OpenCV-exact gray of the top-left size x size crop, uint8 (size, size), C-contiguous.

    cv2.cvtColor when OpenCV is there (about 10x faster on the CPU than the int32 torch code, and
    equal to it for all 2^24 colours, which tests/test_metrics.py checks), else rgb_to_gray."""
    crop = img_bgr[:size, :size]
    cv2 = import_cv2()
    if cv2 is not None:
        return cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_BGR2GRAY)
    return np.ascontiguousarray(rgb_to_gray(crop, order="bgr", channels="last"))


class _Scorer:
    """Runs glcm_score on batches of gray crops on one device with the right backend."""

    def __init__(self, device: torch.device, size: int, patch: int, backend: Optional[str]):
        from ..ops.glcm import glcm_score  # the GLCM kernels (ops/glcm.py)

        self.fn = glcm_score
        self.device, self.size, self.patch = device, size, patch
        # CPU tensors: the compiled C++ / torch path, not the Triton interpreter, unless asked.
        if backend is None and device.type == "cpu" and settings.current().backend is None:
            backend = "cpu"
        self.backend = backend

    def __call__(self, grays: Sequence[np.ndarray]) -> List[float]:
        x = torch.from_numpy(np.stack(grays))
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        if self.backend is not None:
            with _backend.prefer(self.backend):
                s = self.fn(x, size=self.size, patch=self.patch)
        else:
            s = self.fn(x, size=self.size, patch=self.patch)
        return [float(v) for v in s.double().cpu().tolist()]


def _dist_context(distributed: Optional[bool], device: torch.device):
    """(world_size, rank, device, initialised_here) for the sharded run."""
    import torch.distributed as dist

    if not dist.is_available():
        return 1, 0, device, False
    if dist.is_initialized():
        ws, rank = dist.get_world_size(), dist.get_rank()
        mine = False
    else:
        if distributed is False or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return 1, 0, device, False
        be = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=be)
        ws, rank, mine = dist.get_world_size(), dist.get_rank(), True
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", rank % max(1, torch.cuda.device_count())))
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    return ws, rank, device, mine


def evaluate_files(
    files: Sequence[PathLike],
    size: int = 2048,
    patch: int = 64,
    device: Union[str, torch.device, None] = "auto",
    workers: Optional[int] = None,
    batch: Optional[int] = None,
    progress: bool = False,
    backend: Optional[str] = None,
    distributed: Optional[bool] = None,
    ignored: Sequence[str] = (),
) -> EvalResult:
    """Evaluate a list of image files (see the module docstring). Arguments as :func:`evaluate_folder`."""
    t0 = time.perf_counter()
    _check_size_patch(size, patch)
    if backend is not None:
        check_choice(backend, "backend", _backend.BACKENDS)
    dev = resolve_device(device)
    files = [os.fspath(f) for f in files]
    ws, rank, dev, mine = _dist_context(distributed, dev)
    finished = False
    try:
        idx = list(range(rank, len(files), ws))
        if workers is None:
            workers = max(1, min(16, (os.cpu_count() or 2) // ws))
        check_int(workers, "workers", lo=1)
        if batch is None:
            batch = max(1, (1 << 26) // (size * size)) if dev.type == "cuda" else 1
        check_int(batch, "batch", lo=1)
        local = _run(files, idx, size, patch, dev, workers, batch, progress and rank == 0, backend)
        for _, r in local:
            r.rank = rank
        if ws > 1:
            import torch.distributed as dist

            parts: List[Optional[list]] = [None] * ws
            dist.all_gather_object(parts, [(i, asdict(r)) for i, r in local])
            local = sorted(((i, ImageRecord(**d)) for part in parts for i, d in part), key=lambda t: t[0])
        finished = True
    finally:
        if mine:
            import torch.distributed as dist

            if finished and ws > 1:
                # every rank is past its last collective before any of them tears gloo/nccl down
                # (not after a failure: a barrier then would wait for ranks that never arrive)
                dist.barrier()
            dist.destroy_process_group()
    return EvalResult(records=[r for _, r in local], size=size, patch=patch, ignored=list(ignored), world_size=ws,
                      seconds=time.perf_counter() - t0)


def _run(files, idx, size, patch, dev, workers, batch, progress, backend):
    scorer = None
    out: List[Tuple[int, ImageRecord]] = []
    buf: List[Tuple[int, ImageRecord, np.ndarray]] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(idx), file=sys.stderr, unit="img", desc="d4k eval", dynamic_ncols=True)

    def flush():
        nonlocal scorer
        if not buf:
            return
        if scorer is None:
            scorer = _Scorer(dev, size, patch, backend)
        scores = scorer([g for _, _, g in buf])
        for (i, rec, _), s in zip(buf, scores):
            rec.glcm_score = s
            out.append((i, rec))
        if bar is not None:
            bar.update(len(buf))
        buf.clear()

    window = max(2 * workers, 2 * batch)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="d4k-decode") as ex:
        pending = collections.deque()
        it = iter(idx)
        for i in it:
            pending.append((i, ex.submit(_prepare, files[i], size)))
            if len(pending) >= window:
                break
        while pending:
            i, fut = pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, ex.submit(_prepare, files[nxt], size)))
            rec, gray = fut.result()
            if gray is None:
                out.append((i, rec))
                if bar is not None:
                    bar.update(1)
                continue
            buf.append((i, rec, gray))
            if len(buf) >= batch:
                flush()
        flush()
    if bar is not None:
        bar.close()
    out.sort(key=lambda t: t[0])
    return out


def evaluate_folder(
    folder: PathLike,
    size: int = 2048,
    patch: int = 64,
    device: Union[str, torch.device, None] = "auto",
    workers: Optional[int] = None,
    limit: Optional[int] = None,
    recursive: bool = False,
    batch: Optional[int] = None,
    progress: bool = False,
    backend: Optional[str] = None,
    distributed: Optional[bool] = None,
) -> EvalResult:
    """GLCM Score and Compression Ratio of every image in ``folder`` (sorted; ``recursive``).

    size/patch: top-left crop and patch size (paper: 2048 or 4096, 64). device: "auto" | "cuda" |
    "cpu". workers: decoding threads. limit: only the first N image files (sorted order).
    batch: images per glcm_score call (default 2^26 / size^2 on CUDA, 1 on the CPU).
    backend: force "cpu" / "triton" for glcm_score (default: the compiled CPU path for CPU
    tensors, the GPU kernels for CUDA tensors). distributed: None -> shard when WORLD_SIZE > 1.
    Files with other extensions are not evaluated; they are listed in ``result.ignored``."""
    images, others = list_images(folder, recursive=recursive)
    if limit is not None:
        check_int(limit, "limit", lo=1)
        images = images[:limit]
    return evaluate_files(images, size=size, patch=patch, device=device, workers=workers, batch=batch,
                          progress=progress, backend=backend, distributed=distributed, ignored=others)


def glcm_score_image(
    image: Union[PathLike, torch.Tensor, np.ndarray],
    size: int = 2048,
    patch: int = 64,
    order: str = "rgb",
    channels: Optional[str] = None,
    gray: bool = False,
    device: Union[str, torch.device, None] = None,
) -> Union[float, torch.Tensor]:
    """The paper's GLCM Score of one image file, or of a uint8 image tensor / batch.

    * a path -> read as the paper does (OpenCV BGR, OpenCV gray) -> float;
    * a uint8 colour tensor/array (layouts of :func:`rgb_to_gray`, channel ``order`` "rgb" or
      "bgr") -> OpenCV-exact gray on its device -> float for one image, float64 tensor (N,) for a
      batch; ``gray=True``: the input is already 8-bit gray, (H, W) or (N, H, W).
    ``device``: where to compute (default: the tensor's device; files -> "auto").
    Raises ImageLoadError for unreadable files, ValueError when the image is smaller than size."""
    from ..ops.glcm import glcm_score

    _check_size_patch(size, patch)
    if isinstance(image, (str, os.PathLike)):
        arr = load_image(image, order="bgr")
        h, w = arr.shape[:2]
        if h < size or w < size:
            raise ValueError(f"image {os.fspath(image)!r} is {w}x{h}, smaller than size {size}x{size}")
        t = torch.from_numpy(np.ascontiguousarray(arr[:size, :size]))
        t = t.to(resolve_device("auto" if device is None else device))
        g = rgb_to_gray(t, order="bgr", channels="last")
        return float(glcm_score(g, size=size, patch=patch))  # 0-d for an (H, W) input
    t = torch.from_numpy(image) if isinstance(image, np.ndarray) else image
    if device is not None:
        t = t.to(resolve_device(device))
    if gray:
        if t.dtype != torch.uint8 or t.dim() not in (2, 3):
            raise ValueError(f"gray=True needs a uint8 (H, W) or (N, H, W) tensor, got {t.dtype} {tuple(t.shape)}")
        g = t
        single = t.dim() == 2
    else:
        g = rgb_to_gray(t, order=order, channels=channels)
        single = g.dim() == 2
    s = glcm_score(g, size=size, patch=patch)
    return float(s) if single else s


def glcm_score_files(
    files: Sequence[PathLike], size: int = 2048, patch: int = 64, device="auto", workers: Optional[int] = None
) -> torch.Tensor:
    """Per-file GLCM Scores, float64 tensor (N,), streamed; raises on the first unreadable file."""
    res = evaluate_files(files, size=size, patch=patch, device=device, workers=workers, distributed=False)
    bad = res.skipped
    if bad:
        r = bad[0]
        if r.reason.startswith("too small"):
            raise ValueError(f"image {r.file!r} is {r.reason}")
        raise ImageLoadError(r.file, r.reason)
    return torch.tensor([r.glcm_score for r in res.records], dtype=torch.float64)
