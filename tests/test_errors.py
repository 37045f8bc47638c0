"""Bad input gets a clear error naming the leaf, argument or value; nothing is lost."""

from __future__ import annotations

import fastbridge
import numpy as np
import pytest
import tensorflow as tf
from conftest import ALL_BACKENDS
from fastbridge import (
    LeafOverflowError,
    SourceError,
    StructureChangedError,
    UnsupportedLeafError,
    stream,
)


def _failing(n_good):
    for i in range(n_good):
        yield {"x": np.full(4, i, np.float32)}
    raise ValueError("decoder exploded")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_source_errors_arrive_in_order_with_the_cause(backend):
    got = []
    with stream(_failing(5), backend=backend, prefetch=2) as s:
        with pytest.raises(SourceError, match="ValueError at batch 5: decoder exploded") as info:
            for b in s:
                got.append(float(b["x"][0]))
        assert isinstance(info.value.__cause__, ValueError)
        assert info.value.batch_index == 5
        with pytest.raises(StopIteration):
            next(s)
    assert got == [0.0, 1.0, 2.0, 3.0, 4.0]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_failing_tf_map_reaches_the_consumer(backend):
    # Elements 6.. have shape [2], which ensure_shape rejects inside the pipeline.
    ds = tf.data.Dataset.range(10).map(lambda i: tf.ensure_shape(tf.fill([i // 6 + 1], i), [1]))
    got = []
    with pytest.raises(SourceError) as info:
        with stream(ds, backend=backend) as s:
            for b in s:
                got.append(int(np.asarray(b)[0]))
    assert got == [0, 1, 2, 3, 4, 5]
    assert isinstance(info.value.__cause__, tf.errors.InvalidArgumentError)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_ragged_and_sparse_leaves_name_their_path(backend):
    ragged = tf.data.Dataset.from_tensor_slices(
        {"tokens": tf.ragged.constant([[1, 2], [3], [4, 5, 6]]), "y": [1, 2, 3]}
    ).batch(2)
    with pytest.raises(UnsupportedLeafError, match=r"\['tokens'\]") as info:
        with stream(ragged, backend=backend) as s:
            next(s)
    assert isinstance(info.value, TypeError)
    assert info.value.path == "['tokens']"
    sparse = [{"sp": tf.sparse.SparseTensor([[0, 0]], [1.0], [2, 2]), "y": np.zeros(2)}]
    with pytest.raises(TypeError, match=r"\['sp'\]"):
        with stream(sparse, backend=backend) as s:
            next(s)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_object_leaves_are_rejected_with_their_path(backend):
    items = [{"meta": {"obj": np.array([{"a": 1}], dtype=object)}}]
    with pytest.raises(UnsupportedLeafError, match=r"\['meta'\]\['obj'\].*Python objects"):
        with stream(items, backend=backend) as s:
            next(s)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_int64_that_does_not_fit_int32_raises_naming_the_leaf(backend):
    items = [
        {"ids": np.array([1, 2], np.int64)},
        {"ids": np.array([1, 2**40], np.int64)},
    ]
    with stream(items, backend=backend) as s:
        first = next(s)
        assert first["ids"].dtype == np.int32
        with pytest.raises(LeafOverflowError, match=r"\['ids'\] has value 1099511627776"):
            next(s)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_structure_and_dtype_changes_are_named(backend):
    items = [{"a": np.zeros(2, np.float32)}, {"a": np.zeros(2, np.float32), "b": np.zeros(1)}]
    with stream(items, backend=backend) as s:
        next(s)
        with pytest.raises(
            StructureChangedError, match=r"batch 1 changed structure: new leaves \['b'\]"
        ):
            next(s)
    items = [{"a": np.zeros(2, np.float32)}, {"a": np.zeros(2, np.int32)}]
    with stream(items, backend=backend) as s:
        next(s)
        with pytest.raises(
            StructureChangedError,
            match=r"leaf \['a'\] changed dtype from float32 to int32 at batch 1",
        ):
            next(s)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backend": "bogus"}, r"backend must be one of 'auto', 'ring'.*got 'bogus'"),
        ({"prefetch": 0}, "prefetch must be an int >= 1, got 0"),
        ({"prefetch": 2.5}, "prefetch must be an int >= 1, got 2.5"),
        ({"slots": 0}, "slots must be an int >= 1 or None, got 0"),
        ({"max_pool_bytes": -1}, "max_pool_bytes must be an int >= 1 or None, got -1"),
        ({"copy_threads": 0}, "copy_threads must be an int >= 1 or None, got 0"),
        ({"device": "nope"}, "device='nope'"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        stream([np.zeros(2)], **kwargs)


def test_bad_sources_and_devices_are_type_errors():
    with pytest.raises(TypeError, match=r"source must be a tf\.data\.Dataset or an iterable"):
        stream(42)
    with pytest.raises(TypeError, match=r"device must be a jax\.Device"):
        stream([np.zeros(2)], device=3.5)
    with pytest.raises(UnsupportedLeafError, match=r"\[0\] is a set"):
        with stream([[{1, 2}]], backend="numpy") as s:
            next(s)


def test_every_error_is_a_fastbridge_error():
    for name in fastbridge.errors.__all__:
        assert issubclass(getattr(fastbridge, name), fastbridge.FastbridgeError)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_large_int64_leaves_are_narrowed_exactly_or_refused(backend):
    """Large leaves take the core's one-pass converting copy (direct/copy backends) or the
    slot fill (ring/numpy): same values, same refusal to wrap."""
    good = np.arange(-50_000, 50_000, dtype=np.int64) * 20_000
    bad = good.copy()
    bad[77_777] = -(2**40)
    with stream([{"big": good}, {"big": bad}], backend=backend) as s:
        first = next(s)
        assert first["big"].dtype == np.int32
        np.testing.assert_array_equal(np.asarray(first["big"]), good)
        with pytest.raises(LeafOverflowError, match=r"\['big'\] has value -1099511627776"):
            next(s)
