"""How one batch becomes a pytree of ``jax.Array`` in each backend.

Every converter runs on the producer thread (except ``copy``, which is the consumer-side
baseline), so JAX's per-leaf import cost never lands on the consumer.
"""

from __future__ import annotations

import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._leaves import (
    _DL_BFLOAT,
    COPY,
    Flat,
    Flattener,
    LeafSpec,
    _is_opaque,
    checked_narrow,
    overflow_error,
    path_name,
)
from .errors import UnsupportedLeafError

LEAF_ALIGN = 64


def _align(offset: int) -> int:
    return -(-offset // LEAF_ALIGN) * LEAF_ALIGN


def layout(flat: Flat) -> tuple[list[int], int]:
    """64-byte-aligned offsets of the array leaves inside a slot, and the bytes needed."""
    offsets, end = [], 0
    for spec, leaf in zip(flat.specs, flat.leaves, strict=True):
        if spec.passthrough:
            offsets.append(-1)
            continue
        start = _align(end)
        offsets.append(start)
        end = start + leaf.size * spec.target_dtype.itemsize
    return offsets, end


class Importer:
    """Turns DLPack exporters on host memory into ``jax.Array`` on the target device."""

    def __init__(self, device: jax.Device) -> None:
        self.device = device
        self.on_cpu = device.platform == "cpu"

    def __call__(self, exporter: Any) -> jax.Array:
        if self.on_cpu:
            return jax.dlpack.from_dlpack(exporter, device=self.device, copy=False)
        # Host (ideally pinned) memory first, then an asynchronous transfer to the device.
        return jax.device_put(jax.dlpack.from_dlpack(exporter), self.device)


class SlotConverter:
    """Copy a batch into a ring slot (Rust or NumPy) and import every leaf without a copy."""

    def __init__(self, ring: Any, device: jax.Device, *, x64: bool) -> None:
        self.ring = ring
        self.flatten = Flattener(x64=x64)
        self.importer = Importer(device)
        self.numpy_ring = not hasattr(ring, "__module__") or "_numpy_ring" in type(ring).__module__
        self.acquire_seconds = 0.0
        self.slot_ranges: dict[int, int] = {}

    def __call__(self, item: Any, index: int) -> tuple[Any, int]:
        import time

        flat = self.flatten(item, index)
        offsets, total = layout(flat)
        started = time.perf_counter()
        slot = self.ring.acquire(total)
        self.acquire_seconds += time.perf_counter() - started
        try:
            self.slot_ranges[slot.address] = slot.capacity
            # COPY leaves travel as bytes: some dtypes (bfloat16) have no buffer-protocol format.
            work = [
                (_as_bytes(leaf) if spec.conversion == COPY else leaf, offset, spec.conversion)
                for leaf, offset, spec in zip(flat.leaves, offsets, flat.specs, strict=True)
                if not spec.passthrough
            ]
            try:
                slot.fill(work)
            except OverflowError as error:
                leaf_index, value = error.args
                array_specs = [s for s in flat.specs if not s.passthrough]
                raise overflow_error(array_specs[leaf_index], value) from None
            out: list[Any] = []
            nbytes = 0
            for leaf, offset, spec in zip(flat.leaves, offsets, flat.specs, strict=True):
                if spec.passthrough:
                    out.append(leaf)
                    continue
                code, bits = spec.dlpack
                exporter = slot.export(offset, list(leaf.shape), code, bits)
                array = self.importer(exporter)
                if self.numpy_ring and code == _DL_BFLOAT:
                    array = jax.lax.bitcast_convert_type(array, jnp.bfloat16)
                out.append(array)
                nbytes += leaf.size * spec.target_dtype.itemsize
        finally:
            slot.release()
        return jax.tree_util.tree_unflatten(flat.treedef, out), nbytes


def _as_bytes(leaf: np.ndarray) -> np.ndarray:
    return leaf.reshape(-1).view(np.uint8)


def _tf() -> Any:
    return sys.modules.get("tensorflow")


class DirectConverter:
    """No ring: hand the source's own buffers to JAX (DLPack from TensorFlow's EagerTensors,
    ``device_put`` of NumPy arrays, which aliases 64-byte-aligned memory on CPU)."""

    def __init__(self, device: jax.Device, *, x64: bool) -> None:
        self.device = device
        self.x64 = x64
        self.flatten = Flattener(x64=x64)
        self._tensor_specs: list[LeafSpec] | None = None

    def __call__(self, item: Any, index: int) -> tuple[Any, int]:
        tf = _tf()
        if tf is not None and _has_tensors(item, tf):
            return self._from_tensors(item, index, tf)
        flat = self.flatten(item, index)
        out: list[Any] = list(flat.leaves)
        todo = [i for i, spec in enumerate(flat.specs) if not spec.passthrough]
        arrays = []
        for i in todo:
            spec, leaf = flat.specs[i], flat.leaves[i]
            arrays.append(leaf if spec.conversion == COPY else checked_narrow(leaf, spec))
        placed = jax.device_put(arrays, self.device)
        nbytes = 0
        for i, array in zip(todo, placed, strict=True):
            out[i] = array
            nbytes += array.nbytes
        return jax.tree_util.tree_unflatten(flat.treedef, out), nbytes

    def _from_tensors(self, item: Any, index: int, tf: Any) -> tuple[Any, int]:
        pairs, treedef = jax.tree_util.tree_flatten_with_path(item, is_leaf=_is_opaque)
        if self._tensor_specs is None:
            # Check structure and dtypes once, on NumPy views of the first batch.
            self.flatten(jax.tree_util.tree_map(_to_numpy, item, is_leaf=_is_opaque), index)
        out: list[Any] = []
        nbytes = 0
        for path, leaf in pairs:
            name = path_name(path)
            if isinstance(leaf, tf.Tensor) and leaf.dtype == tf.string:
                out.append(leaf.numpy())
                continue
            if not isinstance(leaf, tf.Tensor):
                raise UnsupportedLeafError(
                    f"leaf {name} is a {type(leaf).__name__}: ragged and sparse tensors have "
                    "no dense layout; convert them first (e.g. .to_tensor())",
                    name,
                )
            dtype = np.dtype(leaf.dtype.as_numpy_dtype)
            if not self.x64 and dtype in (np.int64, np.uint64, np.float64, np.complex128):
                spec = self.flatten._specs[len(out)]
                array = jax.device_put(checked_narrow(leaf.numpy(), spec), self.device)
            else:
                array = jax.dlpack.from_dlpack(leaf, device=self.device)
            out.append(array)
            nbytes += array.nbytes
        if treedef != self.flatten._treedef:
            # Same message as for NumPy sources.
            self.flatten(jax.tree_util.tree_map(_to_numpy, item, is_leaf=_is_opaque), index)
        self._tensor_specs = self.flatten._specs
        return jax.tree_util.tree_unflatten(treedef, out), nbytes


def _to_numpy(leaf: Any) -> Any:
    return leaf.numpy() if hasattr(leaf, "numpy") and not _is_opaque(leaf) else leaf


def _has_tensors(item: Any, tf: Any) -> bool:
    leaves = jax.tree_util.tree_leaves(item, is_leaf=_is_opaque)
    return any(isinstance(leaf, (tf.Tensor, tf.RaggedTensor, tf.SparseTensor)) for leaf in leaves)


class CopyConverter:
    """The tutorial baseline: ``jnp.array`` of every leaf, on the consumer thread."""

    def __init__(self, device: jax.Device, *, x64: bool) -> None:
        self.device = device
        self.flatten = Flattener(x64=x64)

    def __call__(self, item: Any, index: int) -> tuple[Any, int]:
        flat = self.flatten(item, index)
        out: list[Any] = []
        nbytes = 0
        for spec, leaf in zip(flat.specs, flat.leaves, strict=True):
            if spec.passthrough:
                out.append(leaf)
                continue
            source = leaf if spec.conversion == COPY else checked_narrow(leaf, spec)
            array = jnp.array(source, device=self.device)
            out.append(array)
            nbytes += array.nbytes
        return jax.tree_util.tree_unflatten(flat.treedef, out), nbytes
