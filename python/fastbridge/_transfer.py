"""How a filled slot reaches its device: the route, and one transfer per device per batch.

A slot holds every leaf of a batch (or of one device's shard of it) back to back. On JAX's
CPU devices the leaves alias the slot and nothing moves (route ``cpu``). On an accelerator
the slot's used bytes travel in **one** transfer per device and are split into leaves there
(:func:`splitter`), instead of one ``device_put`` per leaf. How that transfer reads the slot
is the route, best first:

``dma_map`` (only when forced, see :func:`choose_route`)
    The slot is registered with the JAX client (``client.dma_map``), so XLA copies from it by
    DMA without staging it through a pinned buffer of its own.
``pinned_host``
    The slot is pinned with the CUDA driver and exported as ``kDLCUDAHost``, which JAX
    imports without a copy into the device's ``pinned_host`` memory; moving it to ``device``
    memory is a DMA.
``register``
    The slot is pinned with the CUDA driver behind XLA's back and handed to ``device_put``;
    XLA does not know the range is pinned and may stage it through its own pinned buffer.
``device_put``
    Plain host memory and ``device_put`` (``pin_memory=False``, or no CUDA driver).

:func:`probe` asks the running JAX what it offers and :func:`choose_route` takes the best;
the ``FASTBRIDGE_TRANSFER`` environment variable forces one (for measurements and tests).
:class:`Transfers` keeps each slot's host memory alive until its transfer has completed.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import mmap
import os
from collections.abc import Callable
from typing import Any, Literal

import jax
import numpy as np

from ._native import PAGE_SIZE
from ._native import core as _core
from ._put import put_bytes, release_host_arrays

Route = Literal["cpu", "dma_map", "pinned_host", "register", "device_put"]
"""How slot memory reaches a device (see the module docstring)."""
ROUTES: tuple[Route, ...] = ("cpu", "dma_map", "pinned_host", "register", "device_put")
ENVIRONMENT = "FASTBRIDGE_TRANSFER"
"""The environment variable that forces a route, e.g. ``FASTBRIDGE_TRANSFER=device_put``."""

_DL_CUDA_HOST = 3  # DLPack's kDLCUDAHost: pinned host memory a CUDA device can DMA from

SplitLayout = tuple[tuple[int, tuple[int, ...], np.dtype], ...]
"""Where each leaf lies in one device's transferred bytes: ``(byte offset, shape, dtype)``
(not the core's ``Layout``, which places a batch in a slot)."""


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What the running JAX and machine offer for moving host memory to ``platform``."""

    platform: str
    """``jax.Device.platform`` of the target (``cpu``, ``gpu``, ``tpu``)."""
    dma_map: bool = False
    """The JAX client registers host ranges (``client.dma_map``) for direct DMA."""
    cuda_host_import: bool = False
    """JAX imports a ``kDLCUDAHost`` DLPack tensor zero-copy into ``pinned_host`` memory."""
    cuda_driver: bool = False
    """The CUDA driver can pin slot memory (``cuMemHostRegister``)."""

    def routes(self) -> tuple[Route, ...]:
        """The routes that can run here, best first."""
        if self.platform == "cpu":
            return ("cpu", "device_put")
        found: list[Route] = []
        if self.dma_map:
            found.append("dma_map")
        if self.cuda_host_import:
            found.append("pinned_host")
        if self.cuda_driver:
            found.append("register")
        return (*found, "device_put")


def choose_route(
    capabilities: Capabilities, *, pin_memory: bool = True, forced: str | None = None
) -> Route:
    """The best route ``capabilities`` allow; ``forced`` (a route name) overrides it, and
    ``pin_memory=False`` rules out every route that pins memory."""
    available = capabilities.routes()
    if forced:
        if forced not in ROUTES:
            raise ValueError(
                f"{ENVIRONMENT}={forced!r} is not a transfer route; use one of {', '.join(ROUTES)}"
            )
        if forced not in available:
            raise ValueError(
                f"{ENVIRONMENT}={forced!r} cannot run on a {capabilities.platform} device with "
                f"this JAX and driver; the routes that can: {', '.join(available)}"
            )
        return forced
    if not pin_memory and capabilities.platform != "cpu":
        return "device_put"
    # dma_map only when forced: the pool frees slots mid-stream (smaller ones replaced by
    # larger, free ones reclaimed under max_pool_bytes) without telling Python, and a
    # registration that outlives its memory makes XLA DMA from the old pinned pages when
    # another buffer lands at that address. The CUDA-pinned routes unpin in the pool itself.
    return next(route for route in available if route != "dma_map")


def registers_with_cuda(route: Route) -> bool:
    """Whether slots must be pinned with the CUDA driver for ``route`` (``dma_map`` pins them
    through the JAX client instead)."""
    return route in ("pinned_host", "register")


def forced_route() -> str | None:
    """The route ``FASTBRIDGE_TRANSFER`` forces, if it is set."""
    return os.environ.get(ENVIRONMENT) or None


@functools.cache
def probe(device: jax.Device) -> Capabilities:
    """Ask the running JAX, on ``device``, which routes work (a page is mapped and imported
    to find out; nothing is left registered). Asked once per device and process."""
    if device.platform == "cpu":
        return Capabilities("cpu")
    return Capabilities(
        device.platform,
        dma_map=_can_dma_map(device),
        cuda_host_import=_imports_cuda_host(device),
        cuda_driver=_core is not None and bool(_core.cuda_available()),
    )


def _can_dma_map(device: jax.Device) -> bool:
    client = device.client
    if not hasattr(client, "dma_map"):
        return False  # JAX older than the dma_map API
    page = mmap.mmap(-1, PAGE_SIZE)
    view = np.frombuffer(page, dtype=np.uint8)
    address = view.ctypes.data
    try:
        client.dma_map(address, PAGE_SIZE)
    except Exception:  # UNIMPLEMENTED on clients that cannot register host memory
        return False
    finally:
        del view
    try:
        client.dma_unmap(address)
    except Exception:  # mapped but not unmappable: do not use the route
        return False
    finally:
        page.close()
    return True


def _imports_cuda_host(device: jax.Device) -> bool:
    if _core is None or not _core.cuda_available():
        return False
    pool = _core.SlotPool(slots=1, lock=False, cuda=True)
    try:
        slot = pool.acquire(PAGE_SIZE)
        if not slot.cuda:
            return False
        # uint8, exported as kDLCUDAHost of the target device
        leaf = slot.export(0, [PAGE_SIZE], 1, 8, device.local_hardware_id or 0)
        slot.release()
        try:
            array = jax.dlpack.from_dlpack(leaf)
        except Exception:  # this JAX refuses kDLCUDAHost tensors
            return False
        kind = getattr(array.sharding, "memory_kind", None)
        return kind == "pinned_host" and device in array.devices()
    finally:
        pool.close()


class DmaMaps:
    """The slot ranges registered with a JAX client (``dma_map`` route).

    Keyed by slot address, with the slot's allocation id: a slot the pool freed and another
    allocated at the same address must not inherit the old registration, which pins the old
    pages. Overlapping registrations left by freed slots are dropped before a new one is made.
    """

    def __init__(self, client: Any) -> None:
        self._client = client
        self._maps: dict[int, tuple[int, int]] = {}  # address -> (buffer id, size)
        self.failures = 0

    def ensure(self, address: int, size: int, buffer_id: int) -> bool:
        """Register the slot unless it is; ``False`` when the client refused (the transfer is
        then staged, but still correct)."""
        if self._maps.get(address) == (buffer_id, size):
            return True
        for other, (_, length) in list(self._maps.items()):
            if other < address + size and address < other + length:
                self._unmap(other)
        try:
            self._client.dma_map(address, size)
        except Exception:
            self.failures += 1
            return False
        self._maps[address] = (buffer_id, size)
        return True

    def _unmap(self, address: int) -> None:
        del self._maps[address]
        try:
            self._client.dma_unmap(address)
        except Exception:  # already gone with its memory: nothing left to undo
            pass

    def close(self) -> None:
        for address in list(self._maps):
            self._unmap(address)

    def __len__(self) -> int:
        return len(self._maps)


def _leaf_from_bytes(part: jax.Array, shape: tuple[int, ...], dtype: np.dtype) -> jax.Array:
    count = math.prod(shape)
    if dtype == np.bool_:
        return (part != 0).reshape(shape)
    if dtype.kind == "c":  # XLA bitcasts no complex type: real and imaginary parts
        real = np.dtype(f"f{dtype.itemsize // 2}")
        pairs = jax.lax.bitcast_convert_type(part.reshape(count, 2, real.itemsize), real)
        return jax.lax.complex(pairs[:, 0], pairs[:, 1]).reshape(shape)
    if dtype.itemsize == 1:
        return jax.lax.bitcast_convert_type(part, dtype).reshape(shape)
    return jax.lax.bitcast_convert_type(part.reshape(count, dtype.itemsize), dtype).reshape(shape)


@functools.lru_cache(maxsize=32)
def splitter(layout: SplitLayout) -> Callable[[jax.Array], list[jax.Array]]:
    """A jitted function from one transferred ``uint8`` buffer to its leaves, on its device.
    Cached per layout (a stream compiles only the few that repeat, see ``_handoff``); the
    cache is small because each compiled layout holds an executable (about 1.4 MB on CPU)."""

    def split(flat: jax.Array) -> list[jax.Array]:
        out = []
        for offset, shape, dtype in layout:
            size = math.prod(shape) * dtype.itemsize
            part = jax.lax.slice(flat, (offset,), (offset + size,))
            out.append(_leaf_from_bytes(part, shape, dtype))
        return out

    return jax.jit(split)


class Transfers:
    """Issue the host-to-device transfers of each slot and keep the slot's host memory alive
    until every one of them has completed.

    ``device_put`` returns before the copy is done, and whether JAX keeps a foreign host buffer
    alive until then depends on the route and the version; so this class holds every host
    reference of a slot's transfers itself, and drops them only once the transferred buffers
    (never handed to the consumer, so never donated) are ready. At most ``depth`` slots are in
    flight: the producer then waits for the oldest, which also bounds the slots they hold.
    """

    def __init__(self, route: Route, depth: int) -> None:
        self.route = route
        self.depth = max(1, depth)
        self._inflight: collections.deque[tuple[list[jax.Array], list[Any]]] = collections.deque()
        self._orphans: list[list[Any]] = []
        """Host references of transfers whose buffer someone deleted (``jax.live_arrays()``
        loops do): it cannot be asked whether it is done, so they are kept until close."""
        self.completed = 0
        """Transfers completed (one per device per batch)."""
        self.waited = 0
        """Slots the producer had to wait for (more than ``depth`` in flight)."""

    def send(self, regions: list[tuple[Any, jax.Device]]) -> list[jax.Array]:
        """Move each ``(exporter, device)`` of one slot (a ``uint8`` export) to its device."""
        flats: list[jax.Array] = []
        keep: list[Any] = []
        for exporter, device in regions:
            cuda_host = exporter.__dlpack_device__()[0] == _DL_CUDA_HOST
            if self.route == "pinned_host" and cuda_host:
                host = jax.dlpack.from_dlpack(exporter)  # zero-copy, in pinned_host memory
                target = jax.sharding.SingleDeviceSharding(device, memory_kind="device")
                flats.append(jax.device_put(host, target))
                keep += [host, exporter]
                continue
            view = np.from_dlpack(exporter)  # plain or pinned host memory
            # On CPU (only when a test or the bench forces this route there) a put would alias
            # the slot: a copy stands in for the DMA.
            flats.append(put_bytes(view, device, copy=device.platform == "cpu"))
            keep += [view, exporter]
        self._inflight.append((flats, keep))
        return flats

    def _done(self, flats: list[jax.Array], wait: bool) -> bool | None:
        """Whether every transfer of a slot completed (waiting for it with ``wait``); ``None``
        when one of its buffers was deleted, so nobody can tell."""
        if any(flat.is_deleted() for flat in flats):
            return None
        if wait:
            jax.block_until_ready(flats)  # type: ignore[no-untyped-call]
            return True
        return all(flat.is_ready() for flat in flats)  # type: ignore[attr-defined]

    def reap(self) -> None:
        """Release the host memory of every slot whose transfers completed; wait for the
        oldest while more than ``depth`` slots are in flight."""
        try:
            while self._inflight:
                flats, keep = self._inflight[0]
                wait = len(self._inflight) > self.depth
                done = self._done(flats, wait)
                if done is False:
                    return
                self._inflight.popleft()
                if done is None:
                    self._orphans.append(keep)
                self.completed += len(flats)
                self.waited += wait
                del flats, keep  # before JAX is asked to let go of its references too
        finally:
            # JAX may hold a slot's view as well, until its next call: let go of it now.
            release_host_arrays()

    def drain(self) -> None:
        """Wait for every transfer in flight and release its host memory."""
        try:
            while self._inflight:
                flats, keep = self._inflight.popleft()
                if self._done(flats, wait=True) is None:
                    self._orphans.append(keep)
                self.completed += len(flats)
                del flats, keep
        finally:
            self._inflight.clear()
            release_host_arrays()

    def __len__(self) -> int:
        """Slots in flight."""
        return len(self._inflight)
