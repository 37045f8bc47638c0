"""One batch to a pytree of ``jax.Array``, following its plan: the producer's per-batch work.

With a plan (``_plan``) in hand, a batch costs one slot from the pool, one call into the core
that copies every slot leaf with the GIL released and exports it, one NumPy view per export,
and one ``putter`` call per leaf (``_put``), which on CPU aliases the slot. Leaves a backend
hands over from the source's own buffers are put the same way, without the slot.

On an accelerator (the transfer route, ``_transfer``) the slot is laid out device by device.
A plan the stream has seen before moves each device's bytes in one transfer and splits them
into leaves on the device with a jitted function; a plan seen once (shapes that vary from batch
to batch, as dynamic padding makes them), or one past the few splits a stream compiles, goes
leaf by leaf from the slot's views, so no new shape ever waits for a compile.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from ._leaves import Flattener, checked_narrow, core_overflow
from ._placement import Placement
from ._plan import NARROW, Plan, Planner
from ._put import release_host_arrays
from ._transfer import DmaMaps, Route, Transfers, splitter
from .errors import CoreRangeError, StreamClosedError

SPLIT_AFTER = 2
"""A plan's batches go leaf by leaf until it has been seen this many times; then its split is
compiled (a shape seen once never pays for a compile)."""
MAX_SPLITS = 8
"""Split layouts one stream compiles at most; batches of any other layout go leaf by leaf, so
memory stays bounded however many shapes a stream meets."""

_BFLOAT16 = np.dtype(ml_dtypes.bfloat16)


class Converter:
    """Turns batches into pytrees of ``jax.Array`` on the producer thread, as their plans say.

    ``pool`` is the backend's slot pool (``None`` when no leaf goes through a slot); on an
    accelerator ``route`` says how slots reach the device and ``depth`` how many slots may be
    in transfer at once (``_transfer``).
    """

    def __init__(
        self,
        planner: Planner,
        pool: Any | None,
        route: Route = "cpu",
        depth: int = 1,
    ) -> None:
        self.planner = planner
        self.pool = pool
        self.numpy_ring = bool(getattr(pool, "numpy_views", False))
        self.route: Route = route
        self.transfers = Transfers(route, depth) if route != "cpu" and pool is not None else None
        self.dma_maps = DmaMaps(planner.placement.device.client) if route == "dma_map" else None
        # close() runs on the consumer's thread while the producer may be issuing a transfer:
        # no transfer starts after close, and none is in flight when registrations go.
        # Re-entrant: a stream's finalizer may run close() on the producer's own thread, in a
        # garbage collection while it holds the lock.
        self._transfer_lock = threading.RLock()
        self._closed = False
        self._split_layouts: set[Any] = set()
        self.acquire_seconds = 0.0
        """Producer time spent waiting for a free slot (the consumer held them all)."""

    @property
    def flatten(self) -> Flattener:
        return self.planner.flatten

    @property
    def placement(self) -> Placement:
        return self.planner.placement

    def __call__(self, item: Any, index: int) -> tuple[Any, int]:
        plan, treedef, leaves = self.planner.prepare(item, index)
        out = list(leaves)  # strings pass through as they are
        if plan.sources:
            self._through_slot(plan, leaves, out)
        specs, routes = plan.structure.specs, plan.structure.routes
        for i, put, rows in plan.direct_puts:
            leaf = leaves[i]
            if routes[i] == NARROW:
                leaf = checked_narrow(leaf, specs[i])
            out[i] = put([leaf] if rows is None else [leaf[r] for r in rows])
        for i, export in plan.placed:
            if export is None and i not in plan.blocks:  # placed from the source itself
                leaf = leaves[i]
                if routes[i] == NARROW:
                    leaf = checked_narrow(leaf, specs[i])
                (out[i],) = self.placement.place([leaf])
        return jax.tree_util.tree_unflatten(treedef, out), plan.out_bytes

    def close(self) -> None:
        """Wait for transfers in flight, then drop the client's registrations of slots."""
        with self._transfer_lock:
            self._closed = True
            try:
                if self.transfers is not None:
                    self.transfers.drain()
            finally:
                if self.dma_maps is not None:
                    self.dma_maps.close()

    # -- the slot -----------------------------------------------------------------------------
    def _through_slot(self, plan: Plan, leaves: list[Any], out: list[Any]) -> None:
        sources = [leaves[i] for i in plan.sources]
        if plan.byte_sources or plan.scalar_sources:
            for n, i in enumerate(plan.sources):
                if i in plan.byte_sources:
                    sources[n] = sources[n].reshape(-1).view(np.uint8)
                elif i in plan.scalar_sources:
                    sources[n] = sources[n].reshape(-1)
        if self.transfers is not None:
            with self._transfer_lock:
                self.transfers.reap()  # completed transfers give their slots back first
            plan.uses += 1
        whole = self.transfers is not None and self._splits(plan)
        slot = self._acquire(plan.nbytes)
        try:
            try:
                layout = self.planner.region_layout(plan) if whole else plan.layout
                exports = slot.write(sources, layout)
            except CoreRangeError as error:
                raise core_overflow(error, [plan.structure.specs[i] for i in plan.fills]) from None
            if self.transfers is None:
                self._put_views(plan, exports, out)
                return
            with self._transfer_lock:
                if self._closed:
                    raise StreamClosedError("the stream was closed")
                if self.dma_maps is not None:
                    self.dma_maps.ensure(slot.address, slot.capacity, slot.buffer_id)
                if whole:
                    self._send_whole(plan, leaves, exports, out)
                else:
                    self._put_views(plan, exports, out)
        finally:
            slot.release()

    def _acquire(self, nbytes: int) -> Any:
        assert self.pool is not None, "a plan with slot leaves needs a pool"
        release_host_arrays()  # slots whose batches the consumer dropped come back first
        started = time.perf_counter()
        slot = self.pool.acquire(nbytes)
        self.acquire_seconds += time.perf_counter() - started
        return slot

    def _put_views(self, plan: Plan, exports: list[Any], out: list[Any]) -> None:
        """Each slot leaf from NumPy views of its exports: aliased on CPU, transferred from the
        slot's memory on an accelerator (JAX holds a view, and with it the slot, until the
        transfer no longer needs it)."""
        views = exports if self.numpy_ring else [np.from_dlpack(e) for e in exports]
        for k in plan.bfloat:
            views[k] = views[k].view(_BFLOAT16)
        for i, put, ks in plan.slot_puts:
            out[i] = put([views[k] for k in ks])
        for i, export in plan.placed:
            if export is not None:
                (out[i],) = self.placement.place([views[export]])

    # -- the transfer route: one transfer per device, split on the device ----------------------
    def _splits(self, plan: Plan) -> bool:
        """Whether ``plan``'s batch moves whole (one transfer per device, then a split): once
        the plan has been seen ``SPLIT_AFTER`` times, and only for ``MAX_SPLITS`` layouts."""
        if plan.splits is not None:
            return True
        if plan.uses < SPLIT_AFTER:
            return False
        key = tuple(region.layout for region in plan.regions)
        if key not in self._split_layouts:
            if len(self._split_layouts) >= MAX_SPLITS:
                return False
            self._split_layouts.add(key)
        plan.splits = [splitter(region.layout) for region in plan.regions]
        return True

    def _send_whole(
        self, plan: Plan, leaves: list[Any], exports: list[Any], out: list[Any]
    ) -> None:
        assert self.transfers is not None and plan.splits is not None
        devices = [region.device for region in plan.regions]
        flats = self.transfers.send(list(zip(exports, devices, strict=True)))
        placement = self.placement
        if placement.sharding is None:  # one device, one region, every leaf whole
            for (i, _), array in zip(plan.regions[0].leaves, plan.splits[0](flats[0]), strict=True):
                out[i] = array
            return
        shards: dict[tuple[int, int, jax.Device], jax.Array] = {}
        for region, flat, split in zip(plan.regions, flats, plan.splits, strict=True):
            for (i, b), array in zip(region.leaves, split(flat), strict=True):
                shards[i, b, region.device] = array
        placed = {i for i, _ in plan.placed}
        for i, found in plan.blocks.items():
            # A block replicated on several devices was written and moved once per device.
            arrays = [shards[i, b, d] for b, (_, _, holders) in enumerate(found) for d in holders]
            if i in placed:
                (out[i],) = placement.place(arrays[:1])
            else:
                out[i] = placement.assemble(tuple(leaves[i].shape), arrays)


class CopyConverter:
    """The tutorial baseline: ``jnp.array`` of every leaf, on the consumer thread."""

    def __init__(self, placement: Placement, flatten: Flattener) -> None:
        self.placement = placement
        self.flatten = flatten

    def __call__(self, item: Any, index: int) -> tuple[Any, int]:
        flat = self.flatten(item, index)
        out: list[Any] = []
        nbytes = 0
        for spec, leaf in zip(flat.specs, flat.leaves, strict=True):
            if spec.passthrough:
                out.append(leaf)
                continue
            self.placement.check(spec.path, tuple(leaf.shape))
            array = jnp.array(checked_narrow(leaf, spec), device=self.placement.device)
            if self.placement.sharding is not None:
                (array,) = self.placement.place([array])
            out.append(array)
            nbytes += array.nbytes
        return jax.tree_util.tree_unflatten(flat.treedef, out), nbytes
