"""Every backend and every kind of source gives the same answer: the same values, the same
dtypes, the same errors at the same place, and options that mean the same thing everywhere.
(Each test here once failed for one backend or one source while the others passed.)"""

from __future__ import annotations

import jax
import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf
from conftest import ALL_BACKENDS
from fastbridge import LeafOverflowError, StructureChangedError, stream
from fastbridge._leaves import aligned_empty
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


# -- dtypes and values ---------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_a_tensor_source_that_changes_dtype_is_refused(backend):
    # tf.data fixes dtypes, but a Python iterable of EagerTensors can change them; direct used
    # to check only the first batch and then wrapped 2**40 into int32.
    def source():
        yield {"x": tf.constant([1.0, 2.0])}
        yield {"x": tf.constant([2**40, 3], tf.int64)}

    with stream(source(), backend=backend) as s:
        np.testing.assert_array_equal(np.asarray(next(s)["x"]), [1.0, 2.0])
        with pytest.raises(StructureChangedError, match=r"\['x'\] changed dtype from float32"):
            next(s)


def test_auto_copies_batches_of_a_source_that_refills_its_buffer():
    # A loader that refills one preallocated buffer is common; held batches must not change.
    # auto aliases only tf.data's buffers (never reused while referenced) and copies the rest.
    buffer = aligned_empty((4,), np.dtype(np.float32))  # aligned: device_put would alias it

    def refilling():
        for i in range(4):
            buffer[:] = i
            yield buffer

    with stream(refilling()) as s:
        assert s.backend in ("ring", "numpy")
        held = list(s)
    assert [float(b[0]) for b in held] == [0.0, 1.0, 2.0, 3.0]


def test_auto_aliases_tf_data_on_cpu():
    ds = tf.data.Dataset.from_tensors(np.ones((8, 8), np.float32)).repeat(2)
    with stream(ds) as s:
        assert s.backend == "direct"
        assert len(list(s)) == 2


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_a_conversion_error_ends_the_stream_without_skipping(backend):
    items = [np.array([0]), np.array([2**40]), np.array([2]), np.array([3])]
    s = stream(items, backend=backend)
    assert int(next(s)[0]) == 0
    with pytest.raises(LeafOverflowError, match="has value 1099511627776"):
        next(s)
    with pytest.raises(StopIteration):
        next(s)  # the bad batch is never silently dropped in favour of the next one
    assert s.state()["batches"] == 1
    s.close()


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_x64_is_the_setting_when_the_stream_was_made(backend):
    with jax.enable_x64(True):
        s = stream([np.array([1, 2**40])], backend=backend)
    try:
        got = next(s)
        assert got.dtype == np.int64 and int(got[1]) == 2**40
    finally:
        s.close()


# -- dtypes= -------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_a_requested_integer_cast_never_wraps(backend):
    items = [{"i": np.array([1, 300], np.int64)}, {"i": np.array([1, 40_000], np.int64)}]
    with stream(items, backend=backend, dtypes={"['i']": "int16"}) as s:
        first = next(s)
        assert first["i"].dtype == np.int16
        np.testing.assert_array_equal(np.asarray(first["i"]), [1, 300])
        with pytest.raises(LeafOverflowError, match=r"has value 40000, which does not fit int16"):
            next(s)


def test_overflow_message_names_the_dtypes_request_not_x64():
    with jax.enable_x64(True):
        s = stream([{"i": np.array([2**40])}], backend="ring", dtypes={"['i']": "int32"})
    with s, pytest.raises(LeafOverflowError) as caught:
        next(s)
    message = str(caught.value)
    assert "dtypes= asks for it" in message and "x64 mode is off" not in message


def test_an_impossible_dtypes_target_is_refused_by_stream_itself():
    with pytest.raises(ValueError, match=r"= <U5: a jax.Array cannot have that dtype"):
        stream([{"x": np.arange(3)}], dtypes={"['x']": "U5"})


def test_float_to_int_cast_refuses_nan():
    items = [{"f": np.array([1.0, np.nan])}]
    with (
        stream(items, backend="numpy", dtypes={"['f']": "int32"}) as s,
        pytest.raises(LeafOverflowError, match=r"\['f'\] has value nan"),
    ):
        next(s)


@pytest.mark.parametrize(
    ("dtypes", "message"),
    [
        ({"['s']": "int32"}, r"= 'int32': leaf \['s'\] holds strings"),
        ({"['x']": "U3"}, r"\['x'\].*= <U3: a jax.Array cannot have that dtype"),
        ({"['x']": "complex128"}, "needs JAX's x64 mode, which is off"),
    ],
)
def test_bad_dtypes_entries_name_the_entry(dtypes, message):
    items = [{"x": np.arange(3), "s": np.array([b"a", b"b", b"c"])}]
    with pytest.raises(ValueError, match=message), stream(items, dtypes=dtypes) as s:
        next(s)


# -- pad_last ------------------------------------------------------------------------------------
def _short_last_epoch():
    for rows in (4, 4, 3):
        yield {"x": np.ones((rows, 2), np.float32) * rows, "step": np.int32(rows),
               "s": np.array(["w"] * rows, dtype=object)}  # fmt: skip


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_pad_last_keeps_scalars_and_pads_strings_with_empty_strings(backend):
    with stream(_short_last_epoch(), backend=backend, pad_last=True) as s:
        *_, (last, mask) = list(s)
    np.testing.assert_array_equal(np.asarray(mask), [True, True, True, False])
    assert int(last["step"]) == 3
    assert list(last["s"]) == ["w", "w", "w", ""]
    np.testing.assert_array_equal(np.asarray(last["x"])[:, 0], [3, 3, 3, 0])


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_pad_last_leaves_keep_their_names(backend):
    items = [{"h": np.ones((2, 2)), "i": np.array([1, 2**40])}]
    with stream(items, backend=backend, pad_last=True, dtypes={"['h']": "float16"}) as s:
        with pytest.raises(LeafOverflowError, match=r"^leaf \['i'\] has value"):
            next(s)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_pad_last_resumed_at_the_short_batch_still_pads_it(backend):
    ds = tf.data.Dataset.range(10).batch(4)  # 4, 4, 2
    with stream(ds, backend=backend, pad_last=True) as s:
        next(s), next(s)
        saved = s.state()
    with stream(ds, backend=backend, pad_last=True, state=saved) as s:
        ((last, mask),) = list(s)
    assert last.shape == (4,)
    np.testing.assert_array_equal(np.asarray(mask), [True, True, False, False])
    np.testing.assert_array_equal(np.asarray(last), [8, 9, 0, 0])


# -- sharding ------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_sharded_streams_place_scalar_leaves_whole(backend):
    mesh = Mesh(np.array(jax.devices()), ("data",))
    items = [{"x": np.arange(16, dtype=np.float32), "n": np.int32(7)}] * 2
    with stream(items, backend=backend, sharding=NamedSharding(mesh, P())) as s:
        for b in s:
            assert int(b["n"]) == 7 and b["n"].sharding.is_fully_replicated
            np.testing.assert_array_equal(np.asarray(b["x"]), np.arange(16))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_bfloat16_tensors_keep_their_dtype(backend):
    data = np.linspace(-1, 1, 8).astype(ml_dtypes.bfloat16)
    ds = tf.data.Dataset.from_tensors(data).repeat(2)
    with stream(ds, backend=backend) as s:
        for b in s:
            assert b.dtype == jax.numpy.bfloat16
            np.testing.assert_array_equal(np.asarray(b).astype(np.float32), data.astype(np.float32))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_unbatched_bfloat16_scalars(backend):
    # TensorFlow's __array__ of a 0-d bfloat16 tensor returns a scalar, not an array.
    values = np.array([0.5, -2.0, 3.0], ml_dtypes.bfloat16)
    ds = tf.data.Dataset.from_tensor_slices(values)
    with stream(ds, backend=backend) as s:
        got = [float(b) for b in s]
    assert got == [0.5, -2.0, 3.0]


@pytest.mark.parametrize(
    ("values", "target"),
    [
        (np.full(4, 2**31, np.float32), "int32"),  # int32's max rounds up to 2**31 in float32
        (np.full(4, 2**32, np.float32), "uint32"),
        (np.full(4, -(2**31) - 1024.0, np.float64), "int32"),
    ],
)
def test_float_to_int_cast_refuses_the_edge_of_the_range(values, target):
    with (
        stream([{"x": values}], backend="numpy", dtypes={"['x']": target}) as s,
        pytest.raises(LeafOverflowError, match=f"does not fit {target}"),
    ):
        next(s)


def test_float_to_int_cast_keeps_the_extremes_that_fit():
    values = np.array([-(2**31), 2**31 - 128, -2147483648.5, 3.9], np.float64)
    with stream([{"x": values}], backend="numpy", dtypes={"['x']": "int32"}) as s:
        got = np.asarray(next(s)["x"])
    np.testing.assert_array_equal(got, values.astype(np.int32))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_a_string_leaf_that_turns_numeric_is_refused(backend):
    def source():
        yield {"s": tf.constant([b"a"]), "x": tf.constant([1.0])}
        yield {"s": tf.constant([2.0]), "x": tf.constant([1.0])}

    with stream(source(), backend=backend) as s:
        assert list(next(s)["s"]) == [b"a"]
        with pytest.raises(StructureChangedError, match=r"\['s'\] changed dtype"):
            next(s)


def test_checkpoint_saves_scalar_bfloat16_tensors():
    ds = tf.data.Dataset.range(6).map(
        lambda i: {"s": tf.cast(i, tf.bfloat16), "x": tf.fill([4], i)}
    )
    with stream(ds, backend="direct", checkpoint=True, prefetch=2) as s:
        assert float(next(s)["s"]) == 0.0
        state = s.state()
    with stream(ds, backend="direct", checkpoint=True, state=state) as s:
        assert [float(b["s"]) for b in s] == [1.0, 2.0, 3.0, 4.0, 5.0]
