"""The backends: how one batch becomes a pytree of ``jax.Array``, and who does the work.

A backend owns its ready queue, its converter and its slots (if any). The producer thread
calls ``prepare`` on every batch it reads and publishes the result on ``queue``; the consumer
takes it and calls ``deliver``. Every converter runs on the producer thread except ``copy``'s,
the consumer-side baseline, so JAX's per-leaf import cost never lands on the consumer.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from ._leaves import (
    CAST,
    COPY,
    DL_BFLOAT,
    Flattener,
    LeafSpec,
    as_array,
    checked_cast,
    checked_narrow,
    core_overflow,
    dtype_changed,
    host_view,
    is_opaque,
    is_string_array,
)
from ._multihost import global_shape
from ._native import LEAF_ALIGN
from ._native import core as _core
from ._transfer import (
    DmaMaps,
    Route,
    Transfers,
    choose_route,
    forced_route,
    probe,
    registers_with_cuda,
    splitter,
)
from .errors import CoreRangeError, ShardingError, StreamClosedError, warn

if TYPE_CHECKING:
    from ._options import StreamOptions
    from ._tfdata import PipelineFacts

BackendName = Literal["auto", "ring", "numpy", "direct", "copy"]
"""The ``backend=`` values of ``stream()``."""
BACKENDS: tuple[BackendName, ...] = ("auto", "ring", "numpy", "direct", "copy")


def _align(offset: int) -> int:
    return -(-offset // LEAF_ALIGN) * LEAF_ALIGN


def _as_bytes(leaf: np.ndarray) -> np.ndarray:
    # Leaves travel into slots as bytes: some dtypes (bfloat16) have no buffer-protocol format.
    return leaf.reshape(-1).view(np.uint8)


class Placement:
    """Where a leaf's arrays go: one device, or the shards of a ``jax.sharding.Sharding``."""

    def __init__(self, device: jax.Device, sharding: jax.sharding.Sharding | None) -> None:
        self.device = device
        self.sharding = sharding
        # Shapes already found to fit: every batch but the last has the same ones, so the
        # sharding is asked once per shape, not once per leaf of every batch.
        self._fits: set[tuple[int, ...]] = set()

    def check(self, path: str, local_shape: tuple[int, ...]) -> None:
        """Raise ``ShardingError`` naming the leaf when the sharding cannot lay it out."""
        if self.sharding is None or local_shape in self._fits:
            return
        full = self.global_shape(local_shape)
        try:
            self.sharding.shard_shape(full)
        except Exception as error:
            raise _sharding_error(self.sharding, path, full, error) from None
        self._fits.add(local_shape)

    def global_shape(self, local_shape: tuple[int, ...]) -> tuple[int, ...]:
        if self.sharding is None:
            return local_shape
        return global_shape(self.sharding, local_shape)

    def row_blocks(self, shape: tuple[int, ...]) -> list[tuple[int, int, list[jax.Device]]]:
        """Local row ranges of a leaf and the local devices holding each, when the sharding
        splits only the leading (batch) axis; one block for the whole leaf without a sharding;
        none (meaning: place it with a copy) for any other sharding."""
        if self.sharding is None:
            return [(0, shape[0] if shape else 0, [self.device])]
        if not shape:
            return []  # a scalar has no batch axis to split: placed whole, as the sharding says
        full = self.global_shape(shape)
        blocks: dict[tuple[int, int], list[jax.Device]] = {}
        for device, found in self.sharding.addressable_devices_indices_map(full).items():
            index = found if found is not None else ()
            rows = index[0] if index else slice(None)
            rest = zip(index[1:], full[1:], strict=False)
            if any(s != slice(None) and s != slice(0, n) for s, n in rest):
                return []  # sharded beyond the batch axis: no aliasing layout
            start, stop, _ = rows.indices(full[0])
            blocks.setdefault((start, stop), []).append(device)
        # This process's rows are one contiguous run of the global batch (see _multihost).
        first = min(start for start, _ in blocks)
        if max(stop for _, stop in blocks) - first != shape[0]:
            return []
        return [
            (start - first, stop - first, devices)
            for (start, stop), devices in sorted(blocks.items())
        ]

    def assemble(self, local_shape: tuple[int, ...], arrays: list[jax.Array]) -> jax.Array:
        """A global array from per-device arrays that alias this process's slot blocks."""
        assert self.sharding is not None, "only sharded leaves are assembled"
        return jax.make_array_from_single_device_arrays(
            self.global_shape(local_shape), self.sharding, arrays
        )

    def place(self, arrays: list[Any]) -> list[jax.Array]:
        """Put whole host arrays where they belong (copies when a device or sharding needs it)."""
        if self.sharding is not None and not self.sharding.is_fully_addressable:
            return [
                jax.make_array_from_process_local_data(  # type: ignore[no-untyped-call]
                    self.sharding, np.asarray(a)
                )
                for a in arrays
            ]
        target = self.sharding if self.sharding is not None else self.device
        return jax.device_put(arrays, target)  # type: ignore[no-any-return]


def _sharding_error(
    sharding: jax.sharding.Sharding, path: str, shape: tuple[int, ...], error: Exception
) -> ShardingError:
    spec = getattr(sharding, "spec", None)
    mesh = getattr(sharding, "mesh", None)
    if spec is None or mesh is None:  # not a NamedSharding: JAX's own words
        return ShardingError(f"leaf {path} of shape {shape} does not fit sharding=: {error}", path)
    parts = []
    for entry in spec:
        names = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
        parts.append((names, math.prod(mesh.shape[n] for n in names)))
    split = [i for i, (_, n) in enumerate(parts) if n > 1]
    if split and len(shape) <= max(split):
        return ShardingError(
            f"leaf {path} has shape {shape}, but sharding={spec} splits axis {max(split)} over "
            f"{parts[max(split)][1]} devices: a leaf it splits needs that axis. Give the leaf "
            "a batch axis (e.g. repeat a per-batch scalar for every row), or pass a sharding "
            "that replicates it (PartitionSpec())",
            path,
        )
    for axis, (names, n) in enumerate(parts):
        if axis < len(shape) and shape[axis] % n:
            what = "rows" if axis == 0 else f"entries along axis {axis}"
            return ShardingError(
                f"leaf {path} has {shape[axis]} {what}, which sharding={spec} splits into {n} "
                f"parts ({', '.join(map(repr, names))}): use a batch size divisible by {n}, or "
                f"pad_last=True with batch_size= a multiple of {n} (a short last batch is then "
                "padded, and the mask marks the padding)",
                path,
            )
    message = f"leaf {path} of shape {shape} does not fit sharding={spec}: {error}"
    return ShardingError(message, path)


class SlotConverter:
    """Copy a batch into a ring slot (Rust or NumPy) and hand every leaf to JAX.

    On JAX's CPU devices (route ``cpu``) every leaf is imported from the slot without a copy;
    with a sharding that splits the batch axis, each shard's rows get their own 64-byte-aligned
    block, so every device's shard aliases the slot. On an accelerator the slot is laid out
    device by device, each device's bytes travel in one transfer and are split into leaves
    there, and the slot is reused only after its transfer has completed (``_transfer``).
    """

    def __init__(
        self,
        pool: Any,
        placement: Placement,
        flatten: Flattener,
        route: Route = "cpu",
        depth: int = 1,
    ) -> None:
        self.pool = pool
        self.placement = placement
        self.flatten = flatten
        self.numpy_ring = bool(getattr(pool, "numpy_views", False))
        self.route: Route = route
        self.transfers = Transfers(route, depth) if route != "cpu" else None
        self.dma_maps = DmaMaps(placement.device.client) if route == "dma_map" else None
        # close() runs on the consumer's thread while the producer may be issuing a transfer:
        # no transfer starts after close, and none is in flight when registrations go.
        # Re-entrant: a stream's finalizer may run close() on the producer's own thread, in a
        # garbage collection while it holds the lock.
        self._transfer_lock = threading.RLock()
        self._closed = False
        self.acquire_seconds = 0.0
        self.slot_ranges: dict[int, int] = {}

    def _import(self, exporter: Any, device: jax.Device, bfloat: bool) -> jax.Array:
        if not device.local_hardware_id or not self.numpy_ring:
            array = jax.dlpack.from_dlpack(exporter, device=device, copy=False)
        else:  # NumPy views always say CPU device 0: JAX copies to the others
            array = jax.dlpack.from_dlpack(exporter, device=device)
        if bfloat and self.numpy_ring:  # NumPy exports bfloat16 as uint16
            array = jax.lax.bitcast_convert_type(array, jnp.bfloat16)
        return array  # type: ignore[no-any-return]

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

    def __call__(self, item: Any, index: int) -> tuple[Any, int]:
        flat = self.flatten(item, index)
        todo = [i for i, spec in enumerate(flat.specs) if not spec.passthrough]
        arrays, nbytes = self.write([flat.leaves[i] for i in todo], [flat.specs[i] for i in todo])
        out: list[Any] = list(flat.leaves)
        for i, array in zip(todo, arrays, strict=True):
            out[i] = array
        return jax.tree_util.tree_unflatten(flat.treedef, out), nbytes

    def write(self, leaves: list[np.ndarray], specs: list[LeafSpec]) -> tuple[list[jax.Array], int]:
        """Fill one slot with ``leaves`` (converted as ``specs`` say) and import each leaf from
        it without a copy. Returns the arrays, in order, and the bytes they hold."""
        if not leaves:
            return [], 0
        if self.transfers is not None:
            return self._write_and_transfer(leaves, specs)
        # Plan: (leaf index, row start, row stop, devices, offset) per block.
        plan: list[tuple[int, int, int, list[jax.Device], int]] = []
        end = 0
        fallback: set[int] = set()
        for i, (spec, leaf) in enumerate(zip(specs, leaves, strict=True)):
            self.placement.check(spec.path, tuple(leaf.shape))
            blocks = self.placement.row_blocks(leaf.shape)
            if not blocks:
                fallback.add(i)
                blocks = [(0, leaf.shape[0] if leaf.ndim else 0, [self.placement.device])]
            row_bytes = leaf[0:1].size * spec.target_dtype.itemsize if leaf.ndim else 0
            for start, stop, devices in blocks:
                offset = _align(end)
                nbytes = (stop - start) * row_bytes if leaf.ndim else spec.target_dtype.itemsize
                plan.append((i, start, stop, devices, offset))
                end = offset + nbytes
        started = time.perf_counter()
        slot = self.pool.acquire(end)
        self.acquire_seconds += time.perf_counter() - started
        try:
            self.slot_ranges[slot.address] = slot.capacity
            work = []
            for i, start, stop, _, offset in plan:
                leaf, spec = leaves[i], specs[i]
                part = leaf[start:stop] if leaf.ndim else leaf
                source = _as_bytes(part) if spec.fill_code == COPY else part.reshape(-1)
                work.append((source, offset, spec.fill_code))
            try:
                slot.fill(work)
            except CoreRangeError as error:
                raise core_overflow(error, [specs[block[0]] for block in plan]) from None
            shards: dict[int, list[jax.Array]] = {}
            for i, start, stop, devices, offset in plan:
                leaf, spec = leaves[i], specs[i]
                code, bits = spec.dlpack
                shape = [stop - start, *leaf.shape[1:]] if leaf.ndim else []
                bfloat = code == DL_BFLOAT
                for device in devices:
                    # The DLPack device id must name the CPU device the shard lands on.
                    hardware_id = device.local_hardware_id or 0
                    exporter = slot.export(offset, shape, code, bits, hardware_id)
                    shards.setdefault(i, []).append(self._import(exporter, device, bfloat))
        finally:
            slot.release()
        out: list[jax.Array] = []
        nbytes = 0
        for i, (leaf, spec) in enumerate(zip(leaves, specs, strict=True)):
            arrays = shards[i]
            if self.placement.sharding is None:
                out.append(arrays[0])
            elif i in fallback:
                out.append(self.placement.place(arrays)[0])
            else:
                out.append(self.placement.assemble(leaf.shape, arrays))
            nbytes += leaf.size * spec.target_dtype.itemsize
        return out, nbytes

    def _write_and_transfer(
        self, leaves: list[np.ndarray], specs: list[LeafSpec]
    ) -> tuple[list[jax.Array], int]:
        """``write`` for accelerators: the slot holds each device's blocks back to back, one
        transfer per device moves them, and a jitted split makes the leaves on the device."""
        assert self.transfers is not None
        # Per leaf: its row blocks and the devices holding each (one block without sharding).
        blocks: list[list[tuple[int, int, list[jax.Device]]]] = []
        fallback: set[int] = set()
        devices: dict[jax.Device, None] = {}  # every target device, in first-seen order
        for i, (spec, leaf) in enumerate(zip(specs, leaves, strict=True)):
            self.placement.check(spec.path, tuple(leaf.shape))
            found = self.placement.row_blocks(leaf.shape)
            if not found:
                fallback.add(i)
                found = [(0, leaf.shape[0] if leaf.ndim else 0, [self.placement.device])]
            blocks.append(found)
            for _, _, holders in found:
                devices.update(dict.fromkeys(holders))
        # Layout, device by device: (leaf, block, offset, shape) entries and the byte range.
        regions: list[tuple[jax.Device, int, int, list[tuple[int, int, int, list[int]]]]] = []
        end = 0
        for device in devices:
            start = end = _align(end)
            entries = []
            for i, leaf_blocks in enumerate(blocks):
                leaf, spec = leaves[i], specs[i]
                for b, (rows_start, rows_stop, holders) in enumerate(leaf_blocks):
                    if device not in holders:
                        continue
                    shape = [rows_stop - rows_start, *leaf.shape[1:]] if leaf.ndim else []
                    offset = _align(end)
                    entries.append((i, b, offset, shape))
                    end = offset + math.prod(shape) * spec.target_dtype.itemsize
            regions.append((device, start, end, entries))
        with self._transfer_lock:
            self.transfers.reap()  # completed transfers give their slots back first
        started = time.perf_counter()
        slot = self.pool.acquire(end)
        self.acquire_seconds += time.perf_counter() - started
        shards: dict[tuple[int, int, jax.Device], jax.Array] = {}
        try:
            self.slot_ranges[slot.address] = slot.capacity
            work = []
            work_specs = []  # the spec of each work item, to name a leaf that overflows
            for _, _, _, entries in regions:
                for i, b, offset, _ in entries:
                    leaf, spec = leaves[i], specs[i]
                    rows_start, rows_stop, _ = blocks[i][b]
                    part = leaf[rows_start:rows_stop] if leaf.ndim else leaf
                    source = _as_bytes(part) if spec.fill_code == COPY else part.reshape(-1)
                    work.append((source, offset, spec.fill_code))
                    work_specs.append(spec)
            try:
                slot.fill(work)
            except CoreRangeError as error:
                raise core_overflow(error, work_specs) from None
            with self._transfer_lock:
                if self._closed:
                    raise StreamClosedError("the stream was closed")
                if self.dma_maps is not None:
                    self.dma_maps.ensure(slot.address, slot.capacity, slot.buffer_id)
                # The DLPack device id names the target GPU, for a pinned_host import.
                exports = [
                    (
                        slot.export(start, [stop - start], 1, 8, device.local_hardware_id or 0),
                        device,
                    )
                    for device, start, stop, _ in regions
                ]
                flats = self.transfers.send(exports)
                for (device, start, _, entries), flat in zip(regions, flats, strict=True):
                    layout = tuple(
                        (offset - start, tuple(shape), np.dtype(specs[i].target_dtype))
                        for i, _, offset, shape in entries
                    )
                    split = splitter(layout)(flat)
                    for (i, b, _, _), array in zip(entries, split, strict=True):
                        shards[i, b, device] = array
        finally:
            slot.release()
        out: list[jax.Array] = []
        nbytes = 0
        for i, (leaf, spec) in enumerate(zip(leaves, specs, strict=True)):
            # A block replicated on several devices was written and moved once per device.
            arrays = [
                shards[i, b, device]
                for b, (_, _, holders) in enumerate(blocks[i])
                for device in holders
            ]
            if self.placement.sharding is None:
                out.append(arrays[0])
            elif i in fallback:
                out.append(self.placement.place(arrays[:1])[0])
            else:
                out.append(self.placement.assemble(leaf.shape, arrays))
            nbytes += leaf.size * spec.target_dtype.itemsize
        return out, nbytes


def _tf() -> Any:
    return sys.modules.get("tensorflow")


class DirectConverter:
    """No ring: hand the source's own buffers to JAX (DLPack from TensorFlow's EagerTensors,
    ``device_put`` of NumPy arrays, which aliases 64-byte-aligned memory on CPU).

    Leaves that must be narrowed (64-bit data with JAX's x64 off) cannot alias the source. With
    ``narrowing``, they are written, range-checked, into a reused slot of the core's pool in one
    GIL-free pass, so no batch pays for fresh pages; without it, into new aligned memory.
    """

    def __init__(
        self,
        placement: Placement,
        flatten: Flattener,
        narrowing: SlotConverter | None = None,
    ) -> None:
        self.placement = placement
        self.flatten = flatten
        self.narrowing = narrowing
        self._checked = False

    @property
    def acquire_seconds(self) -> float:
        """Time spent waiting for a slot for narrowed leaves (the consumer held them all)."""
        return self.narrowing.acquire_seconds if self.narrowing is not None else 0.0

    def __call__(self, item: Any, index: int) -> tuple[Any, int]:
        tf = _tf()
        if tf is not None and _has_tensors(item, tf):
            return self._from_tensors(item, index, tf)
        flat = self.flatten(item, index)
        out: list[Any] = list(flat.leaves)
        todo = [i for i, spec in enumerate(flat.specs) if not spec.passthrough]
        nbytes = self._convert(out, [(i, flat.leaves[i], flat.specs[i]) for i in todo])
        return jax.tree_util.tree_unflatten(flat.treedef, out), nbytes

    def _convert(self, out: list[Any], leaves: list[tuple[int, Any, LeafSpec]]) -> int:
        """Put each ``(position, leaf, spec)`` into ``out[position]`` as a ``jax.Array``: the
        narrowed ones through a slot (or new memory), the rest without a copy where JAX can."""
        positions = [i for i, _, _ in leaves]
        for _, leaf, spec in leaves:
            self.placement.check(spec.path, tuple(leaf.shape))
        narrowed = [entry for entry in leaves if entry[2].conversion not in (COPY, CAST)]
        if narrowed and self.narrowing is not None:
            arrays, _ = self.narrowing.write(
                [leaf for _, leaf, _ in narrowed], [spec for _, _, spec in narrowed]
            )
            for (i, _, _), array in zip(narrowed, arrays, strict=True):
                out[i] = array
            leaves = [entry for entry in leaves if entry[2].conversion in (COPY, CAST)]
        to_place: list[tuple[int, Any]] = []
        for i, leaf, spec in leaves:
            if not isinstance(leaf, np.ndarray) and self.placement.sharding is None:
                out[i] = jax.dlpack.from_dlpack(leaf, device=self.placement.device)
            elif not isinstance(leaf, np.ndarray):
                # A view of TensorFlow's buffer: device_put slices it per shard without a copy,
                # where a jax.Array on one device would be copied to the others.
                to_place.append((i, host_view(leaf)))
            else:
                to_place.append((i, checked_narrow(leaf, spec)))
        if to_place:
            placed = self.placement.place([array for _, array in to_place])
            for (i, _), array in zip(to_place, placed, strict=True):
                out[i] = array
        return sum(out[i].nbytes for i in positions)

    def _from_tensors(self, item: Any, index: int, tf: Any) -> tuple[Any, int]:
        pairs, treedef = jax.tree_util.tree_flatten_with_path(item, is_leaf=is_opaque)
        if not self._checked or treedef != self.flatten.treedef:
            # Check structure and dtypes on NumPy views (no copy) of the first batch, and of any
            # batch whose structure differs (to raise the same message as NumPy sources).
            self.flatten(jax.tree_util.tree_map(_to_numpy, item, is_leaf=is_opaque), index)
            self._checked = True
        specs = self.flatten.specs
        out: list[Any] = []
        todo: list[tuple[int, Any, LeafSpec]] = []
        for (path, leaf), spec in zip(pairs, specs, strict=True):
            if spec.passthrough:
                # Still strings? (as the Flattener checks for NumPy sources)
                if isinstance(leaf, tf.Tensor):
                    if leaf.dtype != tf.string:
                        raise dtype_changed(spec, _numpy_dtype(leaf.dtype), index)
                    out.append(leaf.numpy())
                    continue
                strings = as_array(leaf, self.flatten.name(path))
                if not is_string_array(strings):
                    raise dtype_changed(spec, strings.dtype, index)
                out.append(strings)
                continue
            if not isinstance(leaf, tf.Tensor):
                # NumPy arrays and scalars mixed into a batch of tensors: contiguous, native
                # byte order (as for NumPy sources); ragged and sparse leaves are refused.
                leaf = as_array(leaf, self.flatten.name(path))
                dtype = leaf.dtype
            else:
                dtype = _numpy_dtype(leaf.dtype)
                if spec.conversion != COPY:
                    # A view of TensorFlow's buffer: ``.numpy()`` would copy it first.
                    leaf = host_view(leaf)
            if dtype != spec.source_dtype:  # a source other than tf.data may change dtypes
                raise dtype_changed(spec, dtype, index)
            if spec.conversion == CAST:
                leaf = checked_cast(np.asarray(leaf), spec)
            todo.append((len(out), leaf, spec))
            out.append(None)
        nbytes = self._convert(out, todo)
        return jax.tree_util.tree_unflatten(treedef, out), nbytes


@functools.lru_cache(maxsize=64)
def _numpy_dtype(tf_dtype: Any) -> np.dtype:
    dtype: np.dtype = np.dtype(tf_dtype.as_numpy_dtype)
    return dtype


def _to_numpy(leaf: Any) -> Any:
    # ``np.asarray`` of an EagerTensor is a view of its buffer; ``.numpy()`` is a copy.
    return host_view(leaf) if hasattr(leaf, "numpy") and not is_opaque(leaf) else leaf


def _has_tensors(item: Any, tf: Any) -> bool:
    leaves = jax.tree_util.tree_leaves(item, is_leaf=is_opaque)
    return any(isinstance(leaf, (tf.Tensor, tf.RaggedTensor, tf.SparseTensor)) for leaf in leaves)


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


class Backend:
    """One backend: a ready queue, a converter, and slots where it copies into slots.

    ``prepare(item, index)`` runs on the producer thread and returns ``(payload, nbytes)``;
    ``deliver(payload)`` runs on the consumer and returns the batch. ``pool`` is the slot pool
    (``None`` when the backend copies nothing into slots). ``numpy_items`` says whether a
    tf.data source is read as NumPy (``as_numpy_iterator()``) or as tensors.
    """

    def __init__(
        self,
        name: str,
        queue: Any,
        pool: Any,
        converter: Any,
        *,
        numpy_items: bool = True,
        route: Route | None = None,
    ) -> None:
        self.name = name
        self.numpy_items = numpy_items
        self.route = route
        """How slot memory reaches the device (``_transfer``); ``None`` without slots."""
        self.queue = queue
        self.pool = pool
        self.converter = converter
        self._final_stats: dict[str, Any] | None = None

    def prepare(self, item: Any, index: int) -> tuple[Any, int]:
        return self.converter(item, index)  # type: ignore[no-any-return]

    def deliver(self, payload: Any) -> Any:
        return payload

    @property
    def acquire_seconds(self) -> float:
        """Producer time spent waiting for a free slot (the consumer held them all)."""
        return float(getattr(self.converter, "acquire_seconds", 0.0))

    def pool_stats(self) -> dict[str, Any]:
        """The slot pool's counters (empty without one; frozen at close)."""
        if self._final_stats is not None:
            return self._final_stats
        if self.pool is None:
            return {}
        stats = dict(self.pool.stats())
        slots = self._slot_converter()
        if slots is not None and slots.dma_maps is not None:
            stats["dma_mapped_slots"] = len(slots.dma_maps)
        return stats

    def _slot_converter(self) -> SlotConverter | None:
        """The converter that fills this backend's slots (``direct``'s narrowing one)."""
        found = getattr(self.converter, "narrowing", None) or self.converter
        return found if isinstance(found, SlotConverter) else None

    def consumer_copies(self) -> bool:
        return False

    def close(self) -> None:
        if self._final_stats is None:
            # Stats after the end describe the pool as it was, not the freed one.
            self._final_stats = self.pool_stats()
        self.queue.close()
        slots = self._slot_converter()
        try:
            if slots is not None:
                slots.close()  # transfers finish before their slots are freed
        finally:
            if self.pool is not None:
                self.pool.close()


class CopyBackend(Backend):
    """``copy``: the producer only reads; ``jnp.array`` of every leaf runs on the consumer."""

    def prepare(self, item: Any, index: int) -> tuple[Any, int]:
        return (item, index), 0

    def deliver(self, payload: Any) -> Any:
        item, index = payload
        # The x64 setting the stream was made under, as the producer thread uses elsewhere.
        with jax.enable_x64(self.converter.flatten.x64):
            batch, _ = self.converter(item, index)
        return batch

    def consumer_copies(self) -> bool:
        return True


def choose(name: BackendName, device: jax.Device, facts: PipelineFacts | None) -> BackendName:
    """``name`` with ``auto`` resolved; ``facts`` describe a tf.data source (else ``None``)."""
    if name == "auto":
        # On CPU, TensorFlow's own buffers need no copy and any extra copy competes with the
        # step for cores and memory bandwidth (benches/RESULTS.md). A buffer TensorFlow made
        # is never written again while referenced; but TensorFlow aliases 64-byte-aligned
        # arrays that Python code in the pipeline returns (from_generator, py_function,
        # numpy_function), and any other iterable may refill the arrays it yielded, so
        # batches the consumer holds could change: those get their own copy in slots. On
        # accelerators, pinned slots feed asynchronous transfers.
        if device.platform == "cpu" and facts is not None and not facts.runs_python:
            return "direct"
        return "ring" if _core is not None else "numpy"
    if name == "ring" and _core is None:
        raise ImportError(
            "backend='ring' needs the Rust extension fastbridge._core, which is not built; "
            "install a fastbridge wheel, or use backend='numpy'"
        )
    if name == "direct" and facts is not None and facts.runs_python:
        warn(
            "backend='direct' hands TensorFlow's buffers to JAX, and this pipeline runs "
            f"Python code ({', '.join(facts.python_ops) or 'from_generator'}) whose arrays "
            "TensorFlow aliases when they are 64-byte aligned: if that code refills an array "
            "it returned, batches you hold change. Use backend='auto' (which copies such "
            "batches into slots), or make the Python code return a new array each time",
        )
    return name


def make_backend(
    name: BackendName, placement: Placement, flatten: Flattener, options: StreamOptions
) -> Backend:
    """The backend ``name`` (already resolved from ``auto`` by :func:`choose`)."""
    from ._numpy_ring import NumpyQueue, NumpySlotPool

    core: Any = _core if name != "numpy" else None  # the NumPy twins when None
    queue: Any = core.ReadyQueue(options.prefetch) if core else NumpyQueue(options.prefetch)
    platform = placement.device.platform
    route: Route | None = None

    def pool() -> Any:
        nonlocal route
        capabilities = probe(placement.device)
        if core is None:  # NumPy slots cannot be pinned with CUDA
            capabilities = dataclasses.replace(
                capabilities, cuda_host_import=False, cuda_driver=False
            )
        route = choose_route(capabilities, pin_memory=options.pin_memory, forced=forced_route())
        settings = dict(
            slots=options.slots_or_default,
            max_bytes=options.max_pool_bytes,
            lock=options.pin_memory,
            cuda=registers_with_cuda(route),
            copy_threads=options.copy_threads_for(platform),
            queue=queue,
        )
        return core.SlotPool(**settings) if core else NumpySlotPool(**settings)

    def converter(slot_pool: Any) -> SlotConverter:
        assert route is not None
        # Transfers in flight hold their slots: at most prefetch of them, and always one slot
        # fewer than the pool has, so the producer finds a slot to fill without the pool
        # growing, and stays prefetch batches ahead.
        depth = min(options.prefetch, options.slots_or_default - 1)
        return SlotConverter(slot_pool, placement, flatten, route, depth=depth)

    if name in ("ring", "numpy"):
        slot_pool = pool()
        return Backend(name, queue, slot_pool, converter(slot_pool), route=route)
    if name == "direct":
        if core is None:  # NumPy narrows into fresh memory
            direct = DirectConverter(placement, flatten)
            return Backend(name, queue, None, direct, numpy_items=False)
        # Slots only for leaves that must be narrowed (allocated on first use, so a batch that
        # aliases its source takes none).
        slot_pool = pool()
        narrowing = converter(slot_pool)
        direct = DirectConverter(placement, flatten, narrowing)
        return Backend(name, queue, slot_pool, direct, numpy_items=False, route=route)
    if name == "copy":
        return CopyBackend(name, queue, None, CopyConverter(placement, flatten))
    raise ValueError(f"unknown backend {name!r}")
