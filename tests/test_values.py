"""Every backend delivers values bit-identical to `as_numpy_iterator()`, structure preserved."""

from __future__ import annotations

import collections

import jax
import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf
from conftest import ALL_BACKENDS
from fastbridge import stream

Point = collections.namedtuple("Point", ["x", "y"])

DTYPES = [
    np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
    np.uint64, np.float16, np.float32, np.float64, np.complex64, np.complex128,
    ml_dtypes.bfloat16,
]  # fmt: skip


def _data(dtype, n=10, shape=(3, 5), seed=0):
    rng = np.random.default_rng(seed)
    raw = rng.normal(size=(n, *shape)) * 50
    if np.dtype(dtype) == np.bool_:
        return raw > 0
    if np.dtype(dtype).kind == "u":
        return np.abs(raw).astype(dtype)
    if np.dtype(dtype).kind == "c":
        return (raw + 1j * raw[::-1]).astype(dtype)
    return raw.astype(dtype)


def _expected(leaf):
    """What JAX's canonical dtypes make of a NumPy leaf (x64 off)."""
    canonical = {np.dtype(np.float64): np.float32, np.dtype(np.int64): np.int32,
                 np.dtype(np.uint64): np.uint32, np.dtype(np.complex128): np.complex64}  # fmt: skip
    return leaf.astype(canonical.get(leaf.dtype, leaf.dtype))


def _assert_same(got, want):
    got_leaves, got_def = jax.tree_util.tree_flatten(got)
    want_leaves, want_def = jax.tree_util.tree_flatten(want)
    assert got_def == want_def
    for g, w in zip(got_leaves, want_leaves, strict=True):
        if isinstance(w, np.ndarray) and w.dtype.kind in "OSU":
            assert isinstance(g, np.ndarray)
            np.testing.assert_array_equal(g, w)
            continue
        assert isinstance(g, jax.Array), type(g)
        e = _expected(np.asarray(w))
        assert g.dtype == e.dtype, (g.dtype, e.dtype)
        assert g.shape == e.shape
        # Bit-identical, NaNs included.
        assert np.asarray(g).tobytes() == e.tobytes()


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_every_dtype_is_bit_identical(backend, dtype):
    ds = tf.data.Dataset.from_tensor_slices(_data(dtype)).batch(4)
    want = list(ds.as_numpy_iterator())
    with stream(ds, backend=backend, prefetch=2) as batches:
        got = list(batches)
    assert len(got) == len(want) == 3
    for g, w in zip(got, want, strict=True):
        _assert_same(g, w)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_nested_structures_are_preserved(backend):
    features = {
        "image": _data(np.uint8, shape=(4, 4, 3)),
        "nested": {"a": _data(np.float32), "pair": (_data(np.int32), _data(np.float16))},
        "text": np.array([f"row {i}".encode() for i in range(10)]),
    }
    ds = tf.data.Dataset.from_tensor_slices(features).batch(3)
    want = list(ds.as_numpy_iterator())
    with stream(ds, backend=backend) as batches:
        got = list(batches)
    assert len(got) == 4
    for g, w in zip(got, want, strict=True):
        _assert_same(g, w)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_python_iterables_of_lists_tuples_and_namedtuples(backend):
    rng = np.random.default_rng(1)
    items = [
        [Point(rng.normal(size=(2, 3)).astype(np.float32), np.arange(i, i + 4)), (np.int8(i),)]
        for i in range(5)
    ]
    with stream(items, backend=backend, prefetch=1) as batches:
        got = list(batches)
    assert len(got) == 5
    for g, w in zip(got, items, strict=True):
        assert isinstance(g, list) and isinstance(g[0], Point) and isinstance(g[1], tuple)
        _assert_same(g, jax.tree_util.tree_map(np.asarray, w))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_shapes_may_change_between_batches(backend):
    """padded_batch: every batch has its own shape; a larger batch grows the slot."""
    ds = tf.data.Dataset.range(1, 40).map(lambda n: tf.range(n, dtype=tf.float32))
    ds = ds.padded_batch(7)
    want = list(ds.as_numpy_iterator())
    assert len({w.shape for w in want}) > 3
    with stream(ds, backend=backend, prefetch=2) as batches:
        got = list(batches)
    for g, w in zip(got, want, strict=True):
        _assert_same(g, w)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_fortran_order_non_contiguous_and_empty_leaves(backend):
    base = np.arange(240, dtype=np.float32).reshape(12, 20)
    items = [
        {"f": np.asfortranarray(base), "strided": base[::2, ::3], "empty": np.zeros((0, 7))},
        {"f": np.asfortranarray(base + 1), "strided": base[1::2, ::3], "empty": np.zeros((0, 7))},
    ]
    with stream(items, backend=backend) as batches:
        got = list(batches)
    for g, w in zip(got, items, strict=True):
        _assert_same(g, w)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_scalar_batches_and_big_endian_leaves(backend):
    items = [{"s": np.float32(i), "be": np.arange(6, dtype=">i4") * i} for i in range(3)]
    with stream(items, backend=backend) as batches:
        got = list(batches)
    for i, g in enumerate(got):
        assert g["s"].shape == () and float(g["s"]) == i
        assert g["be"].dtype == np.int32
        np.testing.assert_array_equal(np.asarray(g["be"]), np.arange(6) * i)


def test_x64_mode_keeps_wide_dtypes():
    with jax.enable_x64(True):
        items = [{"d": np.arange(4, dtype=np.float64), "i": np.array([2**40], np.int64)}]
        with stream(items, backend="ring") as batches:
            (got,) = list(batches)
        assert got["d"].dtype == np.float64
        assert got["i"].dtype == np.int64 and int(got["i"][0]) == 2**40


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("source", ["tf.data", "numpy"])
def test_dtypes_cast_applies_to_every_backend_and_source(backend, source):
    # A per-leaf cast asked for with dtypes= (not a narrowing the core does) must be honoured
    # for TensorFlow's EagerTensors too, where direct otherwise hands the buffer through.
    data = {"x": np.linspace(-2, 2, 32, dtype=np.float32).reshape(4, 8), "y": np.arange(4)}
    ds = tf.data.Dataset.from_tensors(data).repeat(2)
    items = ds if source == "tf.data" else [data, data]
    with stream(items, backend=backend, dtypes={"['x']": "float16"}) as batches:
        got = list(batches)
    assert len(got) == 2
    for b in got:
        assert (b["x"].dtype, b["y"].dtype) == (np.float16, np.int32)
        np.testing.assert_array_equal(np.asarray(b["x"]), data["x"].astype(np.float16))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_tensors_mixed_with_numpy_leaves_and_scalars(backend):
    # A source may yield EagerTensors next to NumPy arrays (big-endian, strided) and Python
    # scalars; every backend treats the NumPy side exactly as it would for a NumPy source.
    ids = np.arange(-5, 5, dtype=">i8")
    strided = np.arange(40, dtype=np.float64).reshape(10, 4)[:, ::2]

    def source():
        for i in range(3):
            yield {"t": tf.constant(np.full((10, 3), i, np.float32)), "ids": ids + i,
                   "strided": strided * i, "step": i}  # fmt: skip

    with stream(source(), backend=backend) as batches:
        got = list(batches)
    assert len(got) == 3
    for i, b in enumerate(got):
        np.testing.assert_array_equal(np.asarray(b["t"]), np.full((10, 3), i, np.float32))
        assert b["ids"].dtype == np.int32 and b["strided"].dtype == np.float32
        np.testing.assert_array_equal(np.asarray(b["ids"]), np.arange(-5, 5) + i)
        np.testing.assert_array_equal(np.asarray(b["strided"]), strided * i)
        assert int(b["step"]) == i
