"""The physical limit of a host-to-device copy: pinned host memory copied to the device on one
CUDA stream, through CuPy or PyTorch (whichever is installed; the faster is the limit)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from samples import Sample


class PinnedCopy:
    """The physical limit: copies from pinned host memory to the device on one CUDA stream,
    all enqueued and then synchronised (through CuPy or PyTorch)."""

    name = ""

    def __init__(self, device_index: int) -> None:
        self.device_index = device_index
        self.buffers: dict[int, Any] = {}

    def prepare(self, nbytes: int) -> Any:
        raise NotImplementedError

    def copy(self, buffers: Any, count: int) -> None:
        """Enqueue ``count`` copies and wait for them."""
        raise NotImplementedError

    def run(self, nbytes: int, batches: int, warmup: int) -> Sample:
        if nbytes not in self.buffers:
            self.buffers[nbytes] = self.prepare(nbytes)
        buffers = self.buffers[nbytes]
        self.copy(buffers, max(1, warmup))
        cpu, started = time.process_time(), time.perf_counter()
        self.copy(buffers, batches)
        seconds = time.perf_counter() - started
        return Sample(seconds, time.process_time() - cpu, nbytes * batches)

    def close(self) -> None:
        self.buffers.clear()


class CupyCopy(PinnedCopy):
    name = "cupy"

    def __init__(self, device_index: int) -> None:
        super().__init__(device_index)
        import cupy
        import cupyx

        self.cupy, self.cupyx = cupy, cupyx
        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("CuPy sees no CUDA device")
        with cupy.cuda.Device(device_index):
            self.stream = cupy.cuda.Stream(non_blocking=True)

    def prepare(self, nbytes: int) -> Any:
        with self.cupy.cuda.Device(self.device_index):
            host = self.cupyx.empty_pinned((nbytes,), dtype=np.uint8)
            host.fill(1)
            target = self.cupy.empty((nbytes,), dtype=self.cupy.uint8)
        return host, target

    def copy(self, buffers: Any, count: int) -> None:
        host, target = buffers
        runtime = self.cupy.cuda.runtime
        with self.cupy.cuda.Device(self.device_index):
            for _ in range(count):
                runtime.memcpyAsync(
                    target.data.ptr,
                    host.ctypes.data,
                    host.nbytes,
                    runtime.memcpyHostToDevice,
                    self.stream.ptr,
                )
            self.stream.synchronize()


class TorchCopy(PinnedCopy):
    name = "torch"

    def __init__(self, device_index: int) -> None:
        super().__init__(device_index)
        import torch

        self.torch = torch
        if not torch.cuda.is_available():
            raise RuntimeError("torch.cuda.is_available() is False")
        self.device = torch.device("cuda", device_index)
        self.stream = torch.cuda.Stream(device=self.device)

    def prepare(self, nbytes: int) -> Any:
        torch = self.torch
        host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        host.fill_(1)
        target = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
        return host, target

    def copy(self, buffers: Any, count: int) -> None:
        host, target = buffers
        with self.torch.cuda.stream(self.stream):
            for _ in range(count):
                target.copy_(host, non_blocking=True)
        self.stream.synchronize()


def pinned_copies(
    dry: bool, device: jax.Device, wanted: Sequence[str]
) -> tuple[list[PinnedCopy], dict[str, str]]:
    """The pinned-copy limits that work here, and why the others do not."""
    found: list[PinnedCopy] = []
    unavailable: dict[str, str] = {}
    index = int(getattr(device, "local_hardware_id", None) or 0)
    for kind in (CupyCopy, TorchCopy):
        if kind.name not in wanted:
            unavailable[kind.name] = "unavailable: not requested (--limits)"
            continue
        if dry:
            unavailable[kind.name] = "unavailable: dry run on CPU (no CUDA)"
            continue
        try:
            found.append(kind(index))
        except Exception as error:
            unavailable[kind.name] = f"unavailable: {error!r}"
    return found, unavailable


def limit_method(limit: PinnedCopy, batches: Callable[[int], int]) -> Callable[[int], Sample]:
    """A sample of ``limit`` at a size, ``batches(size)`` copies after 2 warm-up copies."""
    return lambda size: limit.run(size, batches(size), 2)
