"""Parking tile state between GroupNorms: on the device while it fits a byte budget, else in host memory.

While the driver (vae/tiling/driver.py) waits for every tile to reach a GroupNorm, each waiting tile's
live tensors are parked in a :class:`Store`. :class:`ParkLedger` decides where each tensor goes and
keeps the byte counts; the planner's parking simulation (vae/tiling/planner.py) places the same sizes
through the same ledger, so its estimates are what a decode does. On CUDA the host copies go to
pinned memory on a side stream, overlapped with the other tiles' compute.
"""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["Parked", "ParkLedger", "Store"]


class Parked:
    """A parked tensor: ``kind`` "dev" (kept on the device) or "host" (``t`` is the host copy; ``dev`` /
    ``event`` the copy back while it is prefetched)."""

    __slots__ = ("kind", "t", "nbytes", "dev", "event")

    def __init__(self, kind, t, nbytes):
        self.kind, self.t, self.nbytes, self.dev, self.event = kind, t, nbytes, None, None


class ParkLedger:
    """Where a parked tensor goes, and the byte counts: it stays on the device while the parked device
    bytes fit ``device_bytes`` (None: unbounded), else it goes to host memory. The driver's
    :class:`Store` and the planner's ``simulate_parking`` both place state through it."""

    def __init__(self, device_bytes: Optional[int]):
        self.limit = device_bytes
        self.on_device = self.on_host = 0
        self.offloaded = 0  # bytes moved to the host
        self.peak_parked = 0  # the most bytes parked at once (device + host)
        self.peak_host = 0  # the most of them in host memory at once

    def park(self, nb: int) -> bool:
        """Account nb parked bytes; True when they go to host memory."""
        self.peak_parked = max(self.peak_parked, self.on_device + self.on_host + nb)
        if self.limit is None or self.on_device + nb <= self.limit:
            self.on_device += nb
            return False
        self.on_host += nb
        self.offloaded += nb
        self.peak_host = max(self.peak_host, self.on_host)
        return True

    def release(self, nb: int, on_host: bool) -> None:
        if on_host:
            self.on_host -= nb
        else:
            self.on_device -= nb


class Store:
    """Keeps parked tensors on the device while they fit ``device_bytes``, else in (pinned) host
    memory (:class:`ParkLedger` decides). On CUDA the copies run on a side stream: a tile's state goes
    to the host while the next tile computes, and the next tile's state comes back (:meth:`prefetch`)
    while this one computes."""

    def __init__(self, device: torch.device, device_bytes: Optional[int]):
        self.device = device
        self.ledger = ParkLedger(device_bytes)
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def park(self, t: torch.Tensor) -> Parked:
        nb = t.numel() * t.element_size()
        if not self.ledger.park(nb):
            return Parked("dev", t, nb)
        host = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=self.stream is not None)
        if self.stream is not None:
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self.stream):
                host.copy_(t, non_blocking=True)
            t.record_stream(self.stream)  # t's memory is not reused before the copy is done
        else:
            host.copy_(t)
        return Parked("host", host, nb)

    def prefetch(self, h: Parked) -> None:
        if h.kind != "host" or h.dev is not None:
            return
        if self.stream is None:
            h.dev = h.t.to(self.device)
            return
        with torch.cuda.stream(self.stream):
            h.dev = h.t.to(self.device, non_blocking=True)
            h.event = self.stream.record_event()

    def unpark(self, h: Parked) -> torch.Tensor:
        self.ledger.release(h.nbytes, h.kind == "host")
        if h.kind == "dev":
            return h.t
        self.prefetch(h)
        t = h.dev
        if self.stream is not None:
            cur = torch.cuda.current_stream(self.device)
            cur.wait_event(h.event)
            t.record_stream(cur)
        h.t = h.dev = h.event = None
        return t
