"""Batches are worked out once per structure, dtypes and shapes (a plan), and the plan is only
ever used for batches it fits: one that differs in any way goes through every check again.

The checks themselves (messages naming the leaf) are in test_errors.py and test_values.py;
here: which batches reuse a plan, that plans and compiled splits stay bounded however many
shapes a stream meets, and that the public ``device_put`` path gives the same batches when
JAX's internal entry is not there.
"""

from __future__ import annotations

import gc

import fastbridge
import jax
import ml_dtypes
import numpy as np
import pytest
from conftest import SLOT_BACKENDS
from fastbridge import _handoff, _plan, _put
from fastbridge._native import core
from fastbridge._testing import internals
from fastbridge.errors import CoreRangeError, StructureChangedError

PLAN_BACKENDS = ["ring", "numpy", "direct"]


def _planner(stream):
    return internals(stream).converter.planner


def _batch(i: int, rows: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(i)
    return {
        "x": rng.standard_normal((rows, 5)).astype(np.float32),
        "ids": rng.integers(-(2**31), 2**31, (rows,), dtype=np.int64),  # narrowed (x64 off)
        "bf": rng.standard_normal((rows, 3)).astype(ml_dtypes.bfloat16),
        "step": np.int32(i),
        "text": np.array([b"row"] * rows),
    }


def _assert_equal(got, want) -> None:
    for key, value in want.items():
        value = np.asarray(value)
        if value.dtype.kind == "S":
            np.testing.assert_array_equal(got[key], value)
            continue
        if value.dtype == np.int64:
            value = value.astype(np.int32)
        assert np.asarray(got[key]).tobytes() == value.tobytes(), key


@pytest.mark.parametrize("backend", PLAN_BACKENDS)
def test_batches_of_one_shape_share_one_plan(backend):
    batches = [_batch(i) for i in range(20)]
    with fastbridge.stream(batches, backend=backend, prefetch=2) as s:
        got = list(s)
        assert len(_planner(s)) == 1
    for g, w in zip(got, batches, strict=True):
        _assert_equal(g, w)


@pytest.mark.parametrize("backend", PLAN_BACKENDS)
def test_a_batch_that_fits_no_plan_is_checked_again(backend):
    """A later batch that is not contiguous, has other shapes, or changes a dtype, goes
    through the checks: the first two are converted as always, the last is refused."""
    base = _batch(0)
    strided = dict(base, x=np.asfortranarray(base["x"]))  # same shape and dtype, other layout
    shorter = _batch(1, rows=3)
    changed = dict(base, x=base["x"].astype(np.float16))
    with fastbridge.stream([base, strided, shorter, base, changed], backend=backend) as s:
        for want in (base, strided, shorter, base):
            _assert_equal(next(s), want)
        with pytest.raises(StructureChangedError, match=r"leaf \['x'\] changed dtype"):
            next(s)


@pytest.mark.parametrize("backend", PLAN_BACKENDS)
def test_tensors_are_planned_like_arrays(backend):
    tf = pytest.importorskip("tensorflow")
    batch = {"x": np.arange(64, dtype=np.float32).reshape(8, 8), "i": np.arange(8)}
    ds = tf.data.Dataset.from_tensors(batch).repeat(6)
    with fastbridge.stream(ds, backend=backend) as s:
        got = list(s)
        assert len(_planner(s)) == 1
    for g in got:
        _assert_equal(g, batch)


@pytest.mark.slow
def test_plans_stay_bounded_however_many_shapes_a_stream_meets():
    source = (np.ones((3, n), np.float32) * n for n in range(1, _plan.PLANS + 60))
    with fastbridge.stream(source, backend="ring") as s:
        for n, batch in enumerate(s, start=1):
            assert batch.shape == (3, n) and float(batch[0, 0]) == n
        assert len(_planner(s)) == _plan.PLANS


@pytest.mark.parametrize("backend", SLOT_BACKENDS)
def test_the_transfer_route_compiles_no_split_for_shapes_seen_once(backend, monkeypatch):
    """Dynamic padding: every batch its own shape. Each goes leaf by leaf from the slot, none
    waits for a compile, and every value is exact."""
    monkeypatch.setenv("FASTBRIDGE_TRANSFER", "device_put")
    batches = [_batch(i, rows=i + 1) for i in range(40)]
    with fastbridge.stream(batches, backend=backend, prefetch=2) as s:
        converter = internals(s).converter
        got = list(s)
        assert converter.transfers.completed == 0
        assert not converter._split_layouts
    for g, w in zip(got, batches, strict=True):
        _assert_equal(g, w)


def test_the_transfer_route_compiles_at_most_max_splits_layouts(monkeypatch):
    """Each of more layouts than MAX_SPLITS repeats: the first MAX_SPLITS get a split (one
    transfer per batch from their second batch on), the others stay leaf by leaf."""
    monkeypatch.setenv("FASTBRIDGE_TRANSFER", "device_put")
    layouts = _handoff.MAX_SPLITS + 3
    batches = [_batch(i, rows=rows) for rows in range(1, layouts + 1) for i in range(3)]
    with fastbridge.stream(batches, backend="ring", prefetch=2) as s:
        converter = internals(s).converter
        got = list(s)
        assert len(converter._split_layouts) == _handoff.MAX_SPLITS
        # Batches 2 and 3 of each of the first MAX_SPLITS layouts went whole.
        assert converter.transfers.completed == 2 * _handoff.MAX_SPLITS
    for g, w in zip(got, batches, strict=True):
        _assert_equal(g, w)


def test_the_fast_path_is_taken_on_the_pinned_jax_versions():
    """The internal entry this path relies on exists and works in the JAX versions this
    project pins; when a new JAX moves it, this fails (and streams fall back, see below)."""
    assert _put.fast_path(jax.devices()[0])


@pytest.mark.parametrize("backend", PLAN_BACKENDS)
def test_the_public_device_put_path_gives_the_same_batches(backend, monkeypatch):
    monkeypatch.setattr(_put, "_batched_device_put", lambda device: None)
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    sharding = NamedSharding(Mesh(np.array(jax.devices()[:4]), ("b",)), PartitionSpec("b"))
    batches = [{k: v for k, v in _batch(i).items() if k != "step"} for i in range(6)]
    with fastbridge.stream(batches, backend=backend, sharding=sharding) as s:
        got = list(s)
    for g, w in zip(got, batches, strict=True):
        assert g["x"].sharding == sharding
        _assert_equal(g, w)


def test_released_batches_give_their_slot_back_before_the_next_wait():
    """JAX releases the host memory an array aliased only at its next call or a garbage
    collection; the stream asks for that release itself, so a consumer that touches nothing
    else of JAX still recycles slots instead of growing the pool."""
    gc.disable()  # no collection may do it for the stream
    try:
        with fastbridge.stream([np.ones((64, 64), np.float32)] * 200, backend="ring") as s:
            for batch in s:
                del batch
            assert s.stats.pool_grown == 0
    finally:
        gc.enable()


# -- the core's Layout and Slot.write, and their NumPy twins ----------------------------------
@pytest.fixture(params=["core", "numpy"])
def kit(request):
    from fastbridge._numpy_ring import NumpyLayout, NumpySlotPool

    if request.param == "core":
        if core is None:
            pytest.skip("needs the Rust extension")
        return core.Layout, core.SlotPool(slots=1, lock=False)
    return NumpyLayout, NumpySlotPool(slots=1)


def test_a_layout_fills_row_ranges_and_exports_blocks(kit):
    Layout, pool = kit
    a = np.arange(12, dtype=np.float32).reshape(4, 3)
    b = np.array([1, -2, 3, 4], np.int64)
    # Rows 2-3 of a, then all of b narrowed to int32, each in its own aligned block.
    layout = Layout(
        2, [(0, 24, 24, 0, 0), (1, 0, 32, 64, 2)], [(0, [2, 3], 2, 32, 0), (64, [4], 0, 32, 0)]
    )
    assert (layout.nbytes, layout.sources, layout.exports) == (80, 2, 2)
    slot = pool.acquire(layout.nbytes)
    rows, narrowed = (np.from_dlpack(e) for e in slot.write([a, b], layout))
    slot.release()
    np.testing.assert_array_equal(rows, a[2:])
    np.testing.assert_array_equal(narrowed, b.astype(np.int32))


@pytest.mark.parametrize(
    ("fills", "exports", "message"),
    [
        ([(0, 0, 64, 0, 0), (0, 0, 64, 32, 0)], [], "overlap"),
        ([(0, 0, 12, 0, 2)], [], "whole 8-byte elements"),
        ([(0, 0, 8, 0, 9)], [], "unknown conversion code 9"),
        ([(1, 0, 8, 0, 0)], [], "source 1 of 1"),
        ([], [(8, [1], 2, 32, 0)], "64-byte aligned"),
    ],
)
def test_a_bad_layout_is_refused_when_it_is_made(kit, fills, exports, message):
    Layout, _ = kit
    with pytest.raises(ValueError, match=message):
        Layout(1, fills, exports)


def test_a_write_checks_what_it_is_given(kit):
    Layout, pool = kit
    layout = Layout(1, [(0, 0, 64, 0, 0)], [])
    slot = pool.acquire(4096)
    with pytest.raises(ValueError, match="takes 1 sources, got 2"):
        slot.write([np.zeros(16, np.float32)] * 2, layout)
    with pytest.raises(ValueError, match="64"):
        slot.write([np.zeros(4, np.float32)], layout)  # 16 bytes where the layout reads 64
    with pytest.raises(ValueError, match="C-contiguous"):
        slot.write([np.zeros((4, 8), np.float32)[:, ::2]], layout)
    with pytest.raises(ValueError, match="needs 8192 bytes"):
        slot.write([np.zeros(2048, np.float32)], Layout(1, [(0, 0, 8192, 0, 0)], []))
    slot.release()


def test_an_overflowing_narrowing_names_its_fill(kit):
    Layout, pool = kit
    layout = Layout(2, [(0, 0, 16, 0, 2), (1, 0, 16, 64, 2)], [])
    slot = pool.acquire(4096)
    with pytest.raises(CoreRangeError) as info:
        slot.write([np.zeros(2, np.int64), np.array([1, 1 << 40], np.int64)], layout)
    assert (info.value.leaf, info.value.value) == (1, str(1 << 40))
    slot.release()
