"""The ring hands slot memory to JAX without copying, and recycles slots."""

from __future__ import annotations

import ctypes
import gc

import jax
import numpy as np
import pytest
import tensorflow as tf
from fastbridge import _core, stream
from fastbridge._testing import recorded_slots
from fastbridge._testing import slot_of as _slot_of


def test_core_leaf_aliases_its_slot():
    ring = _core.SlotPool(slots=1)
    slot = ring.acquire(4096)
    assert slot.address % _core.PAGE_SIZE == 0
    data = np.arange(256, dtype=np.float32).reshape(16, 16)
    slot.fill([(data, 128, 0)])
    leaf = slot.export(128, [16, 16], 2, 32)
    array = jax.dlpack.from_dlpack(leaf, copy=False)
    assert array.unsafe_buffer_pointer() == slot.address + 128 == leaf.address
    np.testing.assert_array_equal(np.asarray(array), data)
    with pytest.raises(RuntimeError, match="after it has been exported"):
        slot.fill([(data, 0, 0)])
    slot.release()
    del leaf
    gc.collect()
    assert ring.stats()["slots_leased"] == 1, "the JAX array still holds the slot"
    del array
    gc.collect()
    assert ring.stats()["slots_leased"] == 0
    assert ring.stats()["slots_free"] == 1


def _capsule_name(capsule: object) -> str | None:
    """The name a capsule carries, read as a consumer reads it (consumers rename ``dltensor``
    to ``used_dltensor`` when they take it)."""
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    name = get_name(capsule)
    return None if name is None else name.decode()


def test_capsules_follow_the_dlpack_protocol():
    ring = _core.SlotPool(slots=1)
    slot = ring.acquire(64)
    slot.fill([(np.arange(4, dtype=np.int32), 0, 0)])
    leaf = slot.export(0, [4], 0, 32)
    slot.release()
    assert leaf.__dlpack_device__() == (1, 0)
    assert _capsule_name(leaf.__dlpack__()) == "dltensor"
    assert _capsule_name(leaf.__dlpack__(max_version=(1, 0))) == "dltensor_versioned"
    view = np.from_dlpack(leaf)  # NumPy asks for a versioned capsule: read-only
    assert not view.flags.writeable
    np.testing.assert_array_equal(view, [0, 1, 2, 3])
    with pytest.raises(BufferError, match="copy=True"):
        leaf.__dlpack__(copy=True)
    with pytest.raises(BufferError, match="device"):
        leaf.__dlpack__(dl_device=(2, 0))
    # An unconsumed capsule frees its reference when collected: only `leaf` and `view` remain.
    del view, leaf
    gc.collect()
    assert ring.stats()["slots_leased"] == 0


def test_ring_stream_aliases_slots_and_recycles_them():
    batch = np.random.default_rng(0).normal(size=(64, 256)).astype(np.float32)
    ds = tf.data.Dataset.from_tensors(batch).repeat(40)
    with recorded_slots() as ranges, stream(ds, backend="ring", prefetch=2) as batches:
        used = []
        for b in batches:
            pointer = b.unsafe_buffer_pointer()
            slot = _slot_of(pointer, ranges)
            assert slot is not None, "the array does not alias a slot: it was copied"
            assert (pointer - slot) % 64 == 0
            used.append(slot)
            np.testing.assert_array_equal(np.asarray(b), batch)
            del b
        stats = batches.stats
    assert len(used) == 40
    assert len(set(used)) <= stats.slots <= 4, "slots are recycled, not reallocated"
    assert stats.pool_grown == 0
    assert stats.bytes_copied == 40 * batch.nbytes


def test_numpy_ring_aliases_its_slots_too():
    batch = np.ones((32, 32), np.float32)
    with recorded_slots() as ranges, stream([batch] * 10, backend="numpy", prefetch=2) as batches:
        pointers = [b.unsafe_buffer_pointer() for b in batches]
    assert all(_slot_of(p, ranges) is not None for p in pointers)


def test_direct_aliases_tensorflow_buffers():
    batch = np.arange(4096, dtype=np.float32).reshape(64, 64)
    ds = tf.data.Dataset.from_tensors(batch).repeat(3)
    tensor = next(iter(ds))
    with stream(ds, backend="direct") as batches:
        out = list(batches)
        assert batches.stats.bytes_copied == 0
    for b in out:
        np.testing.assert_array_equal(np.asarray(b), batch)
    del tensor


def test_direct_narrows_64_bit_leaves_into_recycled_slots():
    # With JAX's x64 off, int64/float64 leaves cannot alias their source: direct writes them
    # into the core's slots (reused, no fresh pages per batch) and aliases every other leaf.
    rng = np.random.default_rng(1)
    batch = {
        "ids": rng.integers(-(2**31), 2**31, (64, 512), dtype=np.int64),
        "price": rng.normal(size=(64, 512)),
        "image": rng.integers(0, 256, (64, 512), dtype=np.uint8),
    }
    ds = tf.data.Dataset.from_tensors(batch).repeat(30)
    with recorded_slots() as ranges, stream(ds, backend="direct", prefetch=2) as batches:
        used = []
        for b in batches:
            assert (b["ids"].dtype, b["price"].dtype, b["image"].dtype) == (
                np.int32,
                np.float32,
                np.uint8,
            )
            ids, price = b["ids"].unsafe_buffer_pointer(), b["price"].unsafe_buffer_pointer()
            assert _slot_of(ids, ranges) is not None, "the narrowed leaf is not in a slot"
            assert _slot_of(ids, ranges) == _slot_of(price, ranges), "one slot per batch"
            assert _slot_of(b["image"].unsafe_buffer_pointer(), ranges) is None
            used.append(_slot_of(ids, ranges))
            np.testing.assert_array_equal(np.asarray(b["ids"]), batch["ids"])
            np.testing.assert_array_equal(np.asarray(b["price"]), batch["price"].astype(np.float32))
            del b
        stats = batches.stats
    assert len(set(used)) <= stats.slots <= 4, "slots are recycled, not reallocated"
    assert stats.bytes_copied == 30 * (batch["ids"].nbytes + batch["price"].nbytes) // 2


def test_direct_without_narrowing_takes_no_slot():
    ds = tf.data.Dataset.from_tensors(np.ones((64, 64), np.float32)).repeat(5)
    with stream(ds, backend="direct") as batches:
        assert len(list(batches)) == 5
        stats = batches.stats
    assert (stats.slots, stats.pool_bytes, stats.bytes_copied) == (0, 0, 0)


def test_pinned_memory_is_reported():
    batch = np.ones((16, 16), np.float32)
    with stream([batch] * 3, backend="ring", pin_memory=False) as batches:
        list(batches)
        assert batches.stats.pinned is False
    with stream([batch] * 3, backend="ring", pin_memory=True) as batches:
        list(batches)
        slot = _core.SlotPool(slots=1).acquire(4096)
        # Pinned exactly when mlock is allowed here; the stream reports what the core achieved.
        assert batches.stats.pinned == slot.locked


def test_direct_with_a_batch_sharding_aliases_tensorflow_buffers_per_shard():
    # Each device's rows are a view of TensorFlow's buffer: device_put of a NumPy view slices
    # without copying, where a jax.Array on one device would be copied to the others.
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    sharding = NamedSharding(Mesh(np.array(jax.devices()[:8]), ("batch",)), PartitionSpec("batch"))
    batch = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
    ds = tf.data.Dataset.from_tensors(batch).repeat(3)
    source = np.asarray(next(iter(ds))).ctypes.data  # from_tensors caches one buffer
    with stream(ds, backend="direct", sharding=sharding) as batches:
        out = list(batches)
    for b in out:
        assert b.sharding == sharding
        rows = {s.index[0].start: s.data.unsafe_buffer_pointer() for s in b.addressable_shards}
        assert rows == {start: source + start * 64 * 4 for start in range(0, 64, 8)}
        np.testing.assert_array_equal(np.asarray(b), batch)
