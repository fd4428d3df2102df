"""Benchmark cases shared by ``d4k bench`` and the pytest-benchmark suites in bench/.

Each op family has a module here (``haar``, ``wavelet_loss``, ``glcm``, ``upconv``, ...) with

    def cases(device: torch.device, quick: bool = False) -> list[Case]

returning one :class:`Case` per (shape group, implementation): d4k beside its peers. Peers that are
not installed are simply left out. On CUDA the shapes are the 4K ones the library is tuned for (the
targets in bench/RESULTS.md); on the CPU they are small so that a run takes a few minutes.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

from .._util import resolve_device

FAMILIES = ("haar", "wavelet_loss", "glcm", "upconv", "vae", "attention", "pipeline")


@dataclasses.dataclass
class Case:
    group: str                      # e.g. "dwt2 J=1 (8,16,512,512) bf16"
    impl: str                       # e.g. "d4k", "pytorch_wavelets", "torch.compile"
    fn: Callable[[], object]        # runs the work once (no synchronisation needed)
    bytes_moved: Optional[int] = None  # fewest bytes the work must move (inputs once + outputs once)
    note: str = ""
    graph: bool = True              # CUDA: also time replays of a CUDA graph of fn (False: host work)
    work_fraction: float = 1.0      # share of the group's work one call does (a sample of a slow peer):
                                    # ratios and the summary compare ms / work_fraction

    @property
    def is_d4k(self) -> bool:
        return self.impl.startswith("d4k")


def time_case(fn: Callable[[], object], device: torch.device, quick: bool = False) -> float:
    """Median time of one call in milliseconds."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=10 if quick else 25, rep=30 if quick else 100, return_mode="median"))
    fn()  # warm-up (first-call compilation, allocator)
    times: List[float] = []
    budget = 0.5 if quick else 2.0
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < budget and len(times) < 200):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def time_graph(fn: Callable[[], object], quick: bool = False) -> float:
    """CUDA only: median time (ms) of replaying a CUDA graph captured from one call of ``fn``.

    Eager timings of small GPU work measure the host (Python, dispatch, kernel launches: ~20 us per
    launch on a virtualised H200 host, bench/RESULTS.md); a graph replay launches the same kernels with
    the host out of the way, which is what a training step captured in a graph (or a host that keeps
    ahead of the GPU) sees. Warm-up runs on a side stream, as torch.cuda.graphs asks."""
    from triton.testing import do_bench

    graph = capture_graph(fn)
    return float(do_bench(graph.replay, warmup=10 if quick else 25, rep=30 if quick else 100,
                          return_mode="median"))


def capture_graph(fn: Callable[[], object]) -> "torch.cuda.CUDAGraph":
    """A CUDA graph of one call of ``fn`` (warmed up on a side stream first, as torch.cuda.graphs
    asks), replayed once before it is returned."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    torch.cuda.synchronize()
    return graph


def copy_bandwidth(device: torch.device) -> Optional[float]:
    """Measured device-to-device copy bandwidth in GB/s (read + write), CUDA only."""
    if device.type != "cuda":
        return None
    n = 1 << 28  # 1 GiB of fp32
    src = torch.empty(n, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = time_case(lambda: dst.copy_(src), device)
    del src, dst
    return 2 * n * 4 / (ms * 1e-3) / 1e9


def collect(ops: Optional[Sequence[str]], device: torch.device, quick: bool) -> List[Case]:
    out: List[Case] = []
    for fam in ops or FAMILIES:
        if fam not in FAMILIES:
            raise SystemExit(f"unknown op family {fam!r}; known: {', '.join(FAMILIES)}")
        try:
            mod = importlib.import_module(f"d4k_kernels.benchmarks.{fam}")
        except ModuleNotFoundError as e:
            if e.name == f"d4k_kernels.benchmarks.{fam}":
                continue  # no benchmarks for this family yet
            raise
        out.extend(mod.cases(device, quick=quick))
    return out


def main(ops=None, device: str = "auto", quick: bool = False, json_path: Optional[str] = None,
         graphs: bool = True) -> int:
    try:
        dev = resolve_device(device)
    except ValueError as e:
        print(f"d4k bench: error: {e}", file=sys.stderr)
        return 2
    bw = copy_bandwidth(dev)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    print(f"d4k bench on {name} (torch {torch.__version__})"
          + (f", measured copy bandwidth {bw:.0f} GB/s" if bw else ""), flush=True)
    cases = collect(ops, dev, quick)
    if not cases:
        print("no benchmark cases found", file=sys.stderr)
        return 1
    rows: List[Dict] = []
    groups: Dict[str, List[Case]] = {}
    for c in cases:
        groups.setdefault(c.group, []).append(c)
    for group, cs in groups.items():
        res = []
        for c in cs:
            try:
                ms = time_case(c.fn, dev, quick)
                err = ""
            except Exception as e:  # a peer failing (e.g. compile) must not stop the table
                ms, err = float("nan"), _short(e)
            gms = None
            if dev.type == "cuda" and c.graph and ms == ms and graphs:
                try:
                    gms = time_graph(c.fn, quick)
                except Exception as e:  # not capturable (host syncs, CPU work): eager time only
                    gms, err = float("nan"), (err + " " if err else "") + "graph: " + _short(e)
                    torch.cuda.synchronize()
            res.append((c, ms, gms, err))
        d4k_ms = next((ms / c.work_fraction for c, ms, _, _ in res if c.is_d4k), float("nan"))
        for c, ms, gms, err in res:
            row = {"group": group, "impl": c.impl, "ms": ms,
                   "vs_d4k": ms / c.work_fraction / d4k_ms if d4k_ms == d4k_ms else None,
                   "bytes": c.bytes_moved, "error": err}
            if c.work_fraction != 1.0:
                row["work_fraction"] = c.work_fraction
            if gms is not None:
                row["graph_ms"] = gms
            t = gms if gms is not None and gms == gms else ms
            if bw and c.bytes_moved and t == t:
                row["pct_bw"] = 100.0 * c.bytes_moved / (t / c.work_fraction * 1e-3) / 1e9 / bw
            rows.append(row)
        _print_group(group, [r for r in rows if r["group"] == group])
        if json_path:  # after every group: a run stopped by a time limit keeps the groups it finished
            _write_json(json_path, {"device": name, "torch": torch.__version__, "copy_GBps": bw, "rows": rows})
    _print_summary(rows)
    return 0


def _write_json(path: str, payload: Dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)


def _short(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:60] if str(e) else ''}"


def _print_group(group: str, rows: List[Dict]) -> None:
    print(f"\n{group}")
    for r in rows:
        ms = f"{r['ms']:10.4f} ms" if r["ms"] == r["ms"] else "     failed"
        ratio = f"{r['vs_d4k']:7.2f}x" if r.get("vs_d4k") and r["ms"] == r["ms"] else "        "
        g = r.get("graph_ms")
        gs = (f"  graph {g:9.4f} ms" if g == g else "  graph    failed") if g is not None else ""
        bw = f"{r['pct_bw']:5.1f}% bw" if "pct_bw" in r else ""
        print(f"  {r['impl']:<24}{ms}  {ratio}{gs} {bw} {r['error']}".rstrip(), flush=True)


def _whole(r: Dict, key: str = "ms") -> float:
    """A row's time for the group's whole work (its time / the share of the work it did)."""
    return r.get(key, float("nan")) / r.get("work_fraction", 1.0)


def _print_summary(rows: List[Dict]) -> None:
    """One line per group: d4k's time, the fastest peer, and how many times faster d4k is; on CUDA
    also the same under CUDA-graph replay (host launch costs out of the way)."""
    has_g = any("graph_ms" in r for r in rows)
    print("\nsummary (median ms for the group's whole work; speed-up = fastest peer / d4k"
          + ("; (g): CUDA-graph replay" if has_g else "") + ")")
    head = f"  {'group':<44}{'d4k':>10}  {'fastest peer':<22}{'peer':>10}{'speed-up':>10}"
    if has_g:
        head += f"{'d4k(g)':>10}{'peer(g)':>10}{'x(g)':>8}"
    print(head + f"{'%bw':>7}")
    groups: Dict[str, List[Dict]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    for g, rs in groups.items():
        d = next((r for r in rs if r["impl"].startswith("d4k")), None)
        peers = [r for r in rs if not r["impl"].startswith("d4k") and r["ms"] == r["ms"]]
        best = min(peers, key=_whole) if peers else None
        dms = _whole(d) if d else float("nan")
        line = f"  {g[:43]:<44}{dms:>10.4f}  "
        if best:
            line += f"{best['impl'][:21]:<22}{_whole(best):>10.4f}{_whole(best) / dms:>9.2f}x"
        else:
            line += f"{'-':<22}{'':>10}{'':>10}"
        if has_g:
            dg = _whole(d, "graph_ms") if d else float("nan")
            gp = [r for r in peers if r.get("graph_ms") is not None and r["graph_ms"] == r["graph_ms"]]
            bg = min(gp, key=lambda r: _whole(r, "graph_ms")) if gp else None
            line += f"{dg:>10.4f}"
            line += (f"{_whole(bg, 'graph_ms'):>10.4f}{_whole(bg, 'graph_ms') / dg:>7.2f}x" if bg and dg == dg and dg > 0
                     else f"{'-':>10}{'':>8}")
        if d and "pct_bw" in d:
            line += f"{d['pct_bw']:>6.1f}%"
        print(line)


def summary_from_json(paths: Sequence[str]) -> None:
    """The summary table of one or more ``--json`` files (those written so far, after a time limit)."""
    rows: List[Dict] = []
    for p in paths:
        try:
            with open(p) as f:
                rows += json.load(f)["rows"]
        except (OSError, ValueError, KeyError) as e:
            print(f"  ({p}: {type(e).__name__})")
    _print_summary(rows)
