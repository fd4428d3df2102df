"""Where an exact tiled 8192^2 decode's time goes on the host side (run on a GPU machine, ~30 s):
the cost of pinning host memory cold (what the decode's first run pays for its ~26 GiB pinned pool)
and warm (torch's caching host allocator reusing blocks), and device<->pinned-host copy bandwidth on a
side stream, as the tiled decoder parks tile state. Prints one line per measurement.

    python bench/gpu_pinned.py [--gib 8] [--block-mib 256]
"""
import argparse
import time

import torch


def _pin(n_blocks: int, block: int):
    t0 = time.perf_counter()
    out = [torch.empty(block, dtype=torch.uint8, pin_memory=True) for _ in range(n_blocks)]
    return out, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=8.0, help="pinned memory to allocate in total")
    ap.add_argument("--block-mib", type=int, default=256, help="size of each pinned tensor")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_pinned.py needs a CUDA GPU")
    block = a.block_mib << 20
    n = max(1, int(a.gib * 2**30) // block)
    gib = n * block / 2**30
    torch.cuda.init()
    blocks, cold = _pin(n, block)
    print(f"pin {gib:.1f} GiB cold ({n} x {a.block_mib} MiB): {cold:.2f} s = {gib / cold:.2f} GiB/s")
    del blocks
    blocks, warm = _pin(n, block)
    print(f"pin {gib:.1f} GiB again (caching host allocator): {warm * 1e3:.1f} ms")
    dev = torch.empty(block, dtype=torch.uint8, device="cuda")
    side = torch.cuda.Stream()
    for name, fn in (("device -> pinned host", lambda h: h.copy_(dev, non_blocking=True)),
                     ("pinned host -> device", lambda h: dev.copy_(h, non_blocking=True))):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.cuda.stream(side):
            for h in blocks:
                fn(h)
        side.synchronize()
        dt = time.perf_counter() - t0
        print(f"{name}, {gib:.1f} GiB on a side stream: {dt:.2f} s = {gib / dt:.1f} GiB/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
