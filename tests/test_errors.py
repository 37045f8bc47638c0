"""Bad input gets a clear error naming the leaf, argument or value; nothing is lost."""

from __future__ import annotations

import collections
import json

import fastbridge
import jax
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

try:
    from fastbridge import _core
except ImportError:
    _core = None


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
        ({"prefetch": 0}, "prefetch must be an int from 1 to 1048576, got 0"),
        ({"slots": 0}, "slots must be an int from 1 to 1048576 or None, got 0"),
        ({"max_pool_bytes": -1}, r"max_pool_bytes must be an int from 1 to \d+ or None, got -1"),
        ({"copy_threads": 0}, "copy_threads must be an int from 1 to 1024 or None, got 0"),
        ({"device": "nope"}, "device='nope'"),
        ({"batch_size": 4}, r"batch_size= only applies with pad_last=True"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        stream([np.zeros(2)], **kwargs)


HUGE = [2**40, 2**62, 2**64, 10**30]


@pytest.mark.parametrize("name", ["prefetch", "slots", "copy_threads", "max_pool_bytes"])
@pytest.mark.parametrize("value", HUGE)
def test_huge_integer_options_are_refused_before_anything_is_allocated(name, value):
    """2**40 used to abort the interpreter (a failed allocation), 2**62 raised a
    PanicException and 2**64 a bare OverflowError: each is a ValueError naming the option."""
    if name == "max_pool_bytes" and value < 2**63:
        # A cap this large is allowed: it only bounds growth, and allocates nothing.
        with stream([np.zeros(2, np.float32)], backend="ring", max_pool_bytes=value) as s:
            assert float(next(s).sum()) == 0.0
        return
    with pytest.raises(ValueError, match=rf"^{name} must be an int from 1 to \d+"):
        stream([np.zeros(2)], **{name: value})


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"prefetch": 2.5}, "prefetch"),
        ({"prefetch": True}, "prefetch"),
        ({"slots": "4"}, "slots"),
        ({"pad_last": 1}, "pad_last"),
        ({"checkpoint": "yes"}, "checkpoint"),
        ({"progress": None}, "progress"),
        ({"pin_memory": 0}, "pin_memory"),
        ({"shard_by_process": "no"}, "shard_by_process"),
    ],
)
def test_options_of_the_wrong_type_are_type_errors_naming_the_option(kwargs, name):
    with pytest.raises(TypeError, match=rf"^{name} must be"):
        stream([np.zeros(2)], **kwargs)


def test_a_core_queue_refuses_a_huge_capacity_without_aborting():
    """The extension itself never aborts on a size it cannot allocate."""
    if _core is None:
        pytest.skip("needs the Rust extension")
    for value in (0, 2**40, 2**62):
        with pytest.raises(ValueError, match="capacity must be between 1 and"):
            _core.ReadyQueue(value)
    with pytest.raises(OverflowError):
        _core.ReadyQueue(2**64)


def test_device_and_sharding_together_are_refused():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    with pytest.raises(ValueError, match=r"pass device= or sharding=, not both"):
        stream([np.zeros(2)], device=jax.devices()[0], sharding=sharding)


def test_a_mapping_source_is_refused_with_a_way_to_make_batches():
    """``stream({"x": array})`` used to iterate the dict's keys and yield string batches."""
    with pytest.raises(TypeError, match=r"source is a dict: iterating a mapping yields its keys"):
        stream({"x": np.zeros((8, 2))})
    with pytest.raises(TypeError, match=r"fastbridge\.from_numpy\(arrays\)"):
        stream(collections.OrderedDict(x=np.zeros(3)))


def test_bad_sources_and_devices_are_type_errors():
    with pytest.raises(TypeError, match=r"source must be a tf\.data\.Dataset or an iterable"):
        stream(42)
    with pytest.raises(TypeError, match=r"device must be a jax\.Device"):
        stream([np.zeros(2)], device=3.5)
    with pytest.raises(UnsupportedLeafError, match=r"\[0\] is a set"):
        with stream([[{1, 2}]], backend="numpy") as s:
            next(s)


def test_every_exception_class_of_the_errors_module_is_a_fastbridge_error():
    """What the module's docstring promises: every exception class it defines (exported or
    not), the one warning aside, derives from FastbridgeError."""
    defined = [
        kind
        for kind in vars(fastbridge.errors).values()
        if isinstance(kind, type)
        and issubclass(kind, BaseException)
        and kind.__module__ == "fastbridge.errors"
    ]
    assert len(defined) >= 14
    for kind in defined:
        if kind is not fastbridge.FastbridgeWarning:
            assert issubclass(kind, fastbridge.FastbridgeError), kind.__name__


def test_every_error_is_a_fastbridge_error():
    for name in fastbridge.errors.__all__:
        kind = getattr(fastbridge, name)
        if issubclass(kind, Warning):
            assert kind is fastbridge.FastbridgeWarning
            continue
        assert issubclass(kind, fastbridge.FastbridgeError), name


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


# -- state= from a corrupted or foreign file -----------------------------------------------------


def _saved(ds, **options):
    with stream(ds, checkpoint=True, prefetch=2, **options) as s:
        next(s)
        return json.loads(json.dumps(s.state()))


@pytest.fixture(scope="module")
def tf_states():
    good = _saved(tf.data.Dataset.range(20))
    foreign = _saved(tf.data.Dataset.range(20).map(lambda x: x * 2).batch(2))
    return good, foreign


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda g, f: [], r"state must be a dict made by Stream\.state\(\), got list"),
        (lambda g, f: {"batches": 1}, r"state\['version'\] must be one of \(1, 2\)"),
        (lambda g, f: {**g, "version": 9}, r"state\['version'\] must be one of"),
        (lambda g, f: {**g, "batches": True}, r"state\['batches'\] must be an int >= 0, got True"),
        (lambda g, f: {**g, "batches": "3"}, r"state\['batches'\] must be an int >= 0, got '3'"),
        (lambda g, f: {**g, "batches": -1}, r"state\['batches'\] must be an int >= 0"),
        (
            lambda g, f: {**g, "batches": 10**18},
            r"state\['batches'\] = 1000000000000000000, but this source has 20 batches",
        ),
        (lambda g, f: {**g, "tf_iterator": "%%%"}, r"state\['tf_iterator'\] is not base64 text"),
        (lambda g, f: {**g, "tf_iterator": 7}, r"state\['tf_iterator'\] must be base64 text"),
        (
            lambda g, f: {**g, "tf_iterator": "aGVsbG8="},
            r"state\['tf_iterator'\] is not a saved tf\.data iterator state",
        ),
        (
            lambda g, f: {**g, "tf_iterator": f["tf_iterator"]},
            r"state\['tf_iterator'\] does not fit this dataset",
        ),
        (lambda g, f: {**g, "pending": [["xx"]]}, r"state\['pending'\]\[0\]\[0\]: not a base64"),
        (lambda g, f: {**g, "pending": [["", ""]]}, r"state\['pending'\]\[0\] holds 2 leaves"),
        (lambda g, f: {**g, "pending": "x"}, r"state\['pending'\] must be a list of batches"),
        (lambda g, f: {**g, "skip": -1}, r"state\['skip'\] must be an int >= 0"),
        (lambda g, f: {**g, "batch_size": 0}, r"state\['batch_size'\] must be an int >= 1"),
        (lambda g, f: {**g, "kind": "tf"}, r"state has unknown field\(s\) 'kind'"),
        (
            lambda g, f: {"version": 2, "batches": 1, "source": {"i": 1}},
            r"state\['source'\] holds a source iterator's own state",
        ),
        (
            lambda g, f: {**g, "source": {"__fastbridge__": "bytes"}},
            r"state\['source'\] is malformed",
        ),
    ],
)
def test_a_bad_state_raises_one_value_error_naming_the_field(tf_states, change, message):
    """Corrupted or foreign states used to give raw binascii, TypeError or TensorFlow parse
    errors; batches=True was taken as 1 and 10**18 silently replayed from batch 0."""
    good, foreign = tf_states
    state = change(good, foreign)
    with pytest.raises(ValueError, match=message):
        with stream(tf.data.Dataset.range(20), checkpoint=True, state=state) as s:
            next(s)


def test_a_tf_state_for_another_kind_of_source_is_refused(tf_states):
    good, _ = tf_states
    with pytest.raises(ValueError, match=r"state\['tf_iterator'\] .* this source is not a tf"):
        stream([np.zeros(2)], state=good)
    with pytest.raises(ValueError, match=r"state\['source'\] holds a source iterator's state"):
        stream([np.zeros(2)], state={"version": 2, "batches": 0, "source": {"i": 0}})


# -- sharding= that cannot lay a leaf out --------------------------------------------------------


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_sharding_errors_name_the_leaf_and_what_would_work(backend):
    """A scalar under P('data') and a batch not divisible by the device count used to fail
    with JAX's own errors, which named neither the leaf nor the option."""
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    scalar = [{"x": np.zeros((8, 2), np.float32), "step": np.int32(3)}]
    with stream(scalar, backend=backend, sharding=sharding) as s:
        with pytest.raises(fastbridge.ShardingError, match=r"leaf \['step'\] has shape \(\)") as e:
            next(s)
    assert "PartitionSpec()" in str(e.value) and e.value.path == "['step']"
    short = [{"x": np.zeros((6, 2), np.float32)}]
    with stream(short, backend=backend, sharding=sharding) as s:
        with pytest.raises(fastbridge.ShardingError, match=r"leaf \['x'\] has 6 rows") as e:
            next(s)
    assert "divisible by 8" in str(e.value) and "pad_last=True" in str(e.value)
    # What the message suggests works: pad_last with a batch size the devices divide.
    with stream(short, backend=backend, sharding=sharding, pad_last=True, batch_size=8) as s:
        batch, mask = next(s)
        assert batch["x"].shape == (8, 2) and np.asarray(mask).sum() == 6


def _pool_types():
    from fastbridge._numpy_ring import NumpySlotPool

    return [NumpySlotPool] if _core is None else [NumpySlotPool, _core.SlotPool]


@pytest.mark.parametrize("pool_type", _pool_types())
def test_a_slot_wait_that_times_out_is_a_slot_timeout_error(pool_type):
    """Not a StreamClosedError: the stream was not closed, every slot is just still held."""
    pool = pool_type(slots=1, lock=False)
    held = pool.acquire(64)
    with pytest.raises(fastbridge.SlotTimeoutError, match="timed out waiting for a free slot") as e:
        pool.acquire(64, timeout=0.01)
    assert isinstance(e.value, TimeoutError)
    assert not isinstance(e.value, fastbridge.StreamClosedError)
    held.release()
    pool.acquire(64, timeout=0).release()
    pool.close()
    with pytest.raises(fastbridge.StreamClosedError):
        pool.acquire(64, timeout=0)


@pytest.mark.parametrize("pool_type", _pool_types())
def test_a_fill_reports_an_out_of_range_value_by_leaf_index(pool_type):
    pool = pool_type(slots=1, lock=False)
    slot = pool.acquire(4096)
    bad = np.array([1, -(2**40), 2], np.int64)
    with pytest.raises(fastbridge.CoreRangeError) as e:
        slot.fill([(np.zeros(4, np.int64), 0, 2), (bad, 64, 2)])
    assert (e.value.leaf, e.value.value) == (1, str(-(2**40)))
    assert isinstance(e.value, LeafOverflowError)
    slot.release()
    pool.close()


def test_copy_into_reports_an_out_of_range_value():
    if _core is None:
        pytest.skip("needs the Rust extension")
    dest = np.zeros(64, np.uint8)
    source = np.array([0, 2**32], np.uint64)
    with pytest.raises(fastbridge.CoreRangeError) as e:
        _core.copy_into(dest, 0, source, _core.CONVERSIONS["u64_to_u32"])
    assert (e.value.leaf, e.value.value) == (0, str(2**32))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_a_ragged_leaf_says_ragged_and_how_to_fix_it(backend):
    # What Hugging Face's with_format("numpy") gives for a column of variable-length lists.
    ragged = np.empty(2, dtype=object)
    ragged[0], ragged[1] = np.arange(3), np.arange(5)
    with pytest.raises(UnsupportedLeafError, match=r"leaf \['ids'\] is ragged.*pad or bucket"):
        with stream([{"ids": ragged}], backend=backend) as s:
            next(s)
    with pytest.raises(UnsupportedLeafError, match=r"holds Python objects"):
        with stream([{"ids": np.array([{}, {}], dtype=object)}], backend=backend) as s:
            next(s)
    with pytest.raises(UnsupportedLeafError, match=r"leaf \['ids'\] of arrays is ragged"):
        fastbridge.from_numpy({"ids": ragged})


@pytest.mark.parametrize("kind", ["core", "numpy"])
def test_huge_or_infinite_timeouts_wait_without_end_and_bad_ones_are_refused(kind):
    from fastbridge import _native
    from fastbridge._numpy_queue import NumpyQueue
    from fastbridge._numpy_ring import NumpySlotPool

    if kind == "core" and _native.core is None:
        pytest.skip("needs the Rust extension")
    queue_type = _native.core.ReadyQueue if kind == "core" else NumpyQueue
    pool_type = _native.core.SlotPool if kind == "core" else NumpySlotPool
    queue = queue_type(2)
    queue.publish("item")
    for timeout in (1e300, float("inf")):  # used to panic in the core (a BaseException)
        holder: list = []
        assert queue.pop_into(holder, timeout) and holder == ["item"]
        queue.publish("item")
        pool = pool_type(slots=1)
        pool.acquire(16, timeout).release()
        pool.close()
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="timeout must be a number of seconds >= 0"):
            queue.pop_into([], bad)
