"""Whole-dataset conversions: to_numpy, from_numpy, map_numpy (real TensorFlow, real files)."""

from __future__ import annotations

import doctest
import importlib
import json
import os
import pkgutil

import ml_dtypes
import numpy as np
import psutil
import pytest

tf = pytest.importorskip("tensorflow")

import fastbridge  # noqa: E402
from fastbridge import convert  # noqa: E402
from fastbridge.convert import (  # noqa: E402
    ConversionError,
    MemmapPathError,
    from_numpy,
    load_memmap,
    map_numpy,
    to_numpy,
)
from fastbridge.errors import (  # noqa: E402
    FastbridgeError,
    LeafOverflowError,
    StructureChangedError,
    UnsupportedLeafError,
)


def features(n: int = 10) -> dict[str, np.ndarray]:
    return {
        "image": np.arange(n * 6, dtype=np.float64).reshape(n, 2, 3),
        "label": np.arange(n, dtype=np.int64) * 7,
    }


def as_list(ds):
    return list(ds.as_numpy_iterator())


# ---------------------------------------------------------------------------------------------
# to_numpy
# ---------------------------------------------------------------------------------------------


def test_unbatched_dataset_is_stacked_and_page_aligned():
    data = features()
    ds = tf.data.Dataset.from_tensor_slices(data)
    out = to_numpy(ds)
    expected = {k: np.stack([e[k] for e in as_list(ds)]) for k in data}
    assert set(out) == {"image", "label"}
    for k in data:
        np.testing.assert_array_equal(out[k], expected[k])
        assert out[k].dtype == data[k].dtype
        assert out[k].flags.writeable and out[k].flags.c_contiguous
        assert out[k].ctypes.data % 64 == 0  # jax.device_put can alias it


def test_batched_dataset_is_concatenated_including_the_partial_last_batch():
    data = features(23)
    ds = tf.data.Dataset.from_tensor_slices(data).batch(5)
    assert int(ds.cardinality()) == 5
    out = to_numpy(ds)
    for k in data:
        np.testing.assert_array_equal(out[k], np.concatenate([b[k] for b in as_list(ds)]))
        np.testing.assert_array_equal(out[k], data[k])


def test_static_batches_stack_unless_batched_is_true():
    data = features(12)
    ds = tf.data.Dataset.from_tensor_slices(data).batch(4, drop_remainder=True)
    stacked = to_numpy(ds)
    assert stacked["image"].shape == (3, 4, 2, 3)
    np.testing.assert_array_equal(stacked["label"], data["label"].reshape(3, 4))
    flat = to_numpy(ds, batched=True)
    np.testing.assert_array_equal(flat["image"], data["image"])
    # and the other way round: batched=False on a ds.batch() dataset stacks equal batches
    per_batch = to_numpy(tf.data.Dataset.from_tensor_slices(data).batch(3), batched=False)
    assert per_batch["label"].shape == (4, 3)


@pytest.mark.parametrize("batch", [None, 7])
def test_unknown_cardinality_grows_in_place(batch):
    n = 1000
    ds = tf.data.Dataset.range(n).filter(lambda i: i % 3 != 0)
    ds = ds.map(lambda i: (tf.fill([4], tf.cast(i, tf.float32)), i))
    if batch:
        ds = ds.batch(batch)
    assert int(ds.cardinality()) == tf.data.UNKNOWN_CARDINALITY
    x, i = to_numpy(ds)
    kept = np.array([v for v in range(n) if v % 3 != 0])
    np.testing.assert_array_equal(i, kept)
    np.testing.assert_array_equal(x, np.repeat(kept[:, None], 4, axis=1).astype(np.float32))


def test_dtype_converts_during_the_copy():
    data = features(9)
    ds = tf.data.Dataset.from_tensor_slices(data).batch(4)
    every = to_numpy(ds, dtype=np.float32)  # int64 -> float32 is a same_kind cast via NumPy
    assert every["image"].dtype == np.float32 and every["label"].dtype == np.float32
    np.testing.assert_array_equal(every["image"], data["image"].astype(np.float32))
    np.testing.assert_array_equal(every["label"], data["label"].astype(np.float32))
    some = to_numpy(ds, dtype={"label": "int32"})
    assert some["image"].dtype == np.float64 and some["label"].dtype == np.int32
    np.testing.assert_array_equal(some["label"], data["label"])


def test_integer_narrowing_never_wraps_and_names_the_leaf():
    values = np.array([1, 2, 2**40, 4], dtype=np.int64)
    ds = tf.data.Dataset.from_tensor_slices({"ids": values}).batch(2)
    with pytest.raises(LeafOverflowError, match=r"\['ids'\].*1099511627776.*batch 1") as info:
        to_numpy(ds, dtype=np.int32)
    assert info.value.path == "['ids']"
    assert isinstance(info.value, OverflowError)
    with pytest.raises(LeafOverflowError, match="int16"):  # the NumPy path checks too
        to_numpy(ds, dtype={"ids": np.int16})


def test_bad_dtype_arguments_name_the_leaf():
    ds = tf.data.Dataset.from_tensor_slices(features(4))
    with pytest.raises(ConversionError, match=r"\['image'\].*float64 to int32"):
        to_numpy(ds, dtype={"image": np.int32})
    with pytest.raises(ConversionError, match=r"\['labels'\].*does not have"):
        to_numpy(ds, dtype={"labels": np.int32})


def test_memmap_writes_npy_files_that_numpy_reopens(tmp_path):
    data = features(50)
    ds = tf.data.Dataset.from_tensor_slices(data).filter(lambda e: e["label"] >= 0).batch(8)
    target = tmp_path / "out"
    out = to_numpy(ds, memmap=target, dtype={"image": np.float32})
    assert isinstance(out["image"], np.memmap)
    manifest = json.loads((target / "manifest.json").read_text())
    assert manifest["rows"] == 50 and manifest["batched"] is True
    assert manifest["tree"] == {"image": "000_image.npy", "label": "001_label.npy"}
    image = np.load(target / "000_image.npy", mmap_mode="r")
    label = np.load(target / "001_label.npy", mmap_mode="r")
    np.testing.assert_array_equal(image, data["image"].astype(np.float32))
    np.testing.assert_array_equal(label, data["label"])
    assert image.offset == 4096  # page-aligned data
    reopened = load_memmap(target)
    np.testing.assert_array_equal(reopened["label"], data["label"])
    # writing again replaces the earlier result
    again = to_numpy(ds.take(2), memmap=target)
    assert again["label"].shape == (16,)
    assert np.load(target / "001_label.npy").shape == (16,)


def test_memmap_keeps_tuple_structure_and_handles_empty_datasets(tmp_path):
    ds = tf.data.Dataset.from_tensor_slices((np.ones((5, 2)), np.arange(5))).batch(2)
    a, b = to_numpy(ds, memmap=tmp_path / "t")
    assert a.shape == (5, 2) and b.tolist() == [0, 1, 2, 3, 4]
    assert load_memmap(tmp_path / "t")[1].tolist() == [0, 1, 2, 3, 4]
    empty = to_numpy(ds.take(0), memmap=tmp_path / "e")
    assert empty[0].shape == (0, 2) and empty[1].dtype == np.int64
    in_ram = to_numpy(tf.data.Dataset.from_tensor_slices(np.ones((3, 4))).take(0))
    assert in_ram.shape == (0, 4)


def ml_dtypes_sources():
    """bfloat16 through tf.data; float8 (which tf.data cannot batch) as NumPy batches."""
    w16 = np.array([1.5, -2.0, 0.25, 4.0, 8.0], ml_dtypes.bfloat16)
    n = np.arange(5, dtype=np.int32)
    w8 = w16.astype(ml_dtypes.float8_e4m3fn)
    return [
        pytest.param(tf.data.Dataset.from_tensor_slices({"w": w16, "n": n}).batch(2), id="bf16"),
        pytest.param([{"w": w8[:2], "n": n[:2]}, {"w": w8[2:], "n": n[2:]}], id="f8"),
    ]


@pytest.mark.parametrize("ds", ml_dtypes_sources())
def test_memmap_keeps_ml_dtypes_leaves(tmp_path, ds):
    # .npy has no code for these dtypes (the header says |V2 or |V1); the manifest has the name
    expected = to_numpy(ds, batched=True)["w"]
    assert expected.dtype in (ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn)
    out = to_numpy(ds, memmap=tmp_path / "o", batched=True)
    assert isinstance(out["w"], np.memmap) and out["w"].dtype == expected.dtype
    np.testing.assert_array_equal(out["w"].astype(np.float32), expected.astype(np.float32))
    for mode in ("r", None):
        reopened = load_memmap(tmp_path / "o", mmap_mode=mode)
        assert reopened["w"].dtype == expected.dtype and reopened["n"].dtype == np.int32
        np.testing.assert_array_equal(reopened["w"].astype(np.float32), expected.astype(np.float32))
    if not isinstance(ds, list):
        empty = to_numpy(ds.take(0), memmap=tmp_path / "e")
        assert empty["w"].shape == (0,) and empty["w"].dtype == expected.dtype
        assert load_memmap(tmp_path / "e")["w"].dtype == expected.dtype


def test_memmap_path_errors(tmp_path):
    ds = tf.data.Dataset.range(3)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(MemmapPathError, match="not a directory") as info:
        to_numpy(ds, memmap=blocker)
    assert isinstance(info.value, OSError) and isinstance(info.value, FastbridgeError)
    with pytest.raises(MemmapPathError, match="not writable"):
        to_numpy(ds, memmap=blocker / "below")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "mine.txt").write_text("keep me")
    with pytest.raises(MemmapPathError, match="non-empty directory"):
        to_numpy(ds, memmap=busy)
    assert (busy / "mine.txt").read_text() == "keep me"
    with pytest.raises(TypeError, match="memmap must be a path"):
        to_numpy(ds, memmap=3)


def test_memmap_files_are_removed_when_conversion_fails(tmp_path):
    ds = tf.data.Dataset.from_tensor_slices(np.array([1, 2**40])).batch(1)
    with pytest.raises(LeafOverflowError):
        to_numpy(ds, memmap=tmp_path / "o", dtype=np.int32)
    assert list((tmp_path / "o").iterdir()) == []


def test_bad_inputs_have_clear_errors():
    with pytest.raises(ConversionError, match=r"infinite cardinality.*take"):
        to_numpy(tf.data.Dataset.range(3).repeat())
    with pytest.raises(TypeError, match="from_numpy"):
        to_numpy(np.ones(3))
    with pytest.raises(TypeError, match="not int"):
        to_numpy(5)
    words = tf.data.Dataset.from_tensor_slices({"w": ["a", "bc"], "n": [1, 2]})
    with pytest.raises(UnsupportedLeafError, match=r"\['w'\].*strings"):
        to_numpy(words)
    ragged = tf.data.Dataset.from_tensor_slices(tf.ragged.constant([[1], [2, 3]])).batch(2)
    with pytest.raises(UnsupportedLeafError, match="Ragged"):
        to_numpy(ragged)


def test_changing_shapes_name_the_leaf_and_batch():
    ds = tf.data.Dataset.from_tensor_slices({"t": tf.ragged.constant([[1], [2, 3], [4, 5, 6]])})
    ds = ds.map(lambda e: {"t": e["t"]}).padded_batch(2)
    with pytest.raises(StructureChangedError, match=r"\['t'\].*batch 1.*padded_batch"):
        to_numpy(ds)
    mixed = tf.data.Dataset.from_tensor_slices({"a": np.ones((4, 2)), "b": np.ones((4, 2))})
    mixed = mixed.map(lambda e: {"a": e["a"], "b": e["b"][:1]})
    with pytest.raises(ConversionError, match=r"1 rows in leaf \['b'\] but 2 in leaf \['a'\]"):
        to_numpy(mixed, batched=True)


def test_python_iterables_and_generators():
    rows = [{"a": np.full(3, i, np.int32)} for i in range(5)]
    out = to_numpy(rows)
    np.testing.assert_array_equal(out["a"][:, 0], np.arange(5))
    out = to_numpy((np.ones((2, 3)) * i for i in range(4)), batched=True)
    assert out.shape == (8, 3)
    with pytest.raises(ConversionError, match="no elements"):
        to_numpy(iter([]))


def test_numpy_fallback_matches_the_core(monkeypatch):
    data = features(7)
    ds = tf.data.Dataset.from_tensor_slices(data).batch(3)
    with_core = to_numpy(ds, dtype=np.float32)
    monkeypatch.setattr("fastbridge.convert._writer._core", None)  # the copy to_numpy makes
    without = to_numpy(ds, dtype=np.float32)
    for k in data:
        np.testing.assert_array_equal(with_core[k], without[k])
    with pytest.raises(LeafOverflowError):
        to_numpy(tf.data.Dataset.from_tensor_slices([2**40]), dtype=np.int32)


def test_progress_bar(capsys):
    out = to_numpy(tf.data.Dataset.range(6).batch(4), progress=True)
    assert out.tolist() == list(range(6))
    assert "2/2" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# from_numpy
# ---------------------------------------------------------------------------------------------


def test_from_numpy_batches_with_static_shapes():
    data = features(10)
    ds = from_numpy(data, batch_size=4)
    assert ds.element_spec["image"] == tf.TensorSpec((None, 2, 3), tf.float64)
    assert int(ds.cardinality()) == 3
    batches = as_list(ds)
    assert [len(b["label"]) for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b["image"] for b in batches]), data["image"])
    fixed = from_numpy(data, batch_size=4, drop_remainder=True)
    assert fixed.element_spec["label"].shape == (4,)
    assert len(as_list(fixed)) == 2


def test_from_numpy_rows_and_round_trip():
    data = (np.arange(20, dtype=np.float32).reshape(10, 2), np.arange(10, dtype=np.uint8))
    ds = from_numpy(data)
    assert ds.element_spec[0].shape == (2,) and int(ds.cardinality()) == 10
    back = to_numpy(ds)
    np.testing.assert_array_equal(back[0], data[0])
    np.testing.assert_array_equal(back[1], data[1])
    words = from_numpy({"w": np.array([b"a", b"bc", b"d"])}, batch_size=2)
    assert [list(b["w"]) for b in as_list(words)] == [[b"a", b"bc"], [b"d"]]


def test_from_numpy_shuffle_is_a_fresh_permutation_each_epoch():
    n = 100
    ds = from_numpy({"i": np.arange(n)}, batch_size=16, shuffle=True, seed=3)
    first = np.concatenate([b["i"] for b in as_list(ds)])
    second = np.concatenate([b["i"] for b in as_list(ds)])
    assert sorted(first.tolist()) == list(range(n)) == sorted(second.tolist())
    assert first.tolist() != second.tolist() and first.tolist() != list(range(n))
    same_seed = from_numpy({"i": np.arange(n)}, batch_size=16, shuffle=True, seed=3)
    assert np.concatenate([b["i"] for b in as_list(same_seed)]).tolist() == first.tolist()
    rows = [int(r["i"]) for r in as_list(from_numpy({"i": np.arange(n)}, shuffle=True))]
    assert sorted(rows) == list(range(n))


def test_from_numpy_works_inside_tf_function():
    data = np.arange(30, dtype=np.float32).reshape(10, 3)
    ds = from_numpy(data, batch_size=4)

    @tf.function
    def total(dataset):
        acc = tf.constant(0.0)
        for batch in dataset:
            acc += tf.reduce_sum(batch)
        return acc

    assert float(total(ds)) == float(data.sum())


def test_from_numpy_bad_inputs():
    with pytest.raises(ConversionError, match=r"\['b'\] of arrays has 3 rows but leaf \['a'\]"):
        from_numpy({"a": np.ones(4), "b": np.ones(3)})
    with pytest.raises(UnsupportedLeafError, match=r"\['a'\].*str"):
        from_numpy({"a": "text"})
    with pytest.raises(ConversionError, match="scalar"):
        from_numpy({"a": np.float32(1)})
    with pytest.raises(ValueError, match="batch_size"):
        from_numpy(np.ones(3), batch_size=0)
    with pytest.raises(TypeError, match="batch_size"):
        from_numpy(np.ones(3), batch_size=2.0)
    with pytest.raises(TypeError, match=r"already a tf\.data\.Dataset"):
        from_numpy(tf.data.Dataset.range(3))


def test_from_numpy_over_a_sparse_memmap_larger_than_2gib(tmp_path):
    rows, width = 600_000, 1024  # float32: 2.29 GiB, past the 2 GB graph limit
    path = tmp_path / "big.f32"
    mm = np.memmap(path, dtype=np.float32, mode="w+", shape=(rows, width))
    mm[:10] = np.arange(10, dtype=np.float32)[:, None]
    mm[-1] = -1.0
    mm.flush()
    assert mm.nbytes > 2 * 1024**3
    assert os.stat(path).st_blocks * 512 < 64 * 1024**2  # sparse: almost nothing on disk
    process = psutil.Process()
    as_list(from_numpy(np.ones((8, 4)), batch_size=4))  # warm up TF's first-use costs
    before = process.memory_info().rss
    ds = from_numpy({"x": mm}, batch_size=4)
    batches = list(ds.take(3).as_numpy_iterator())
    after = process.memory_info().rss
    np.testing.assert_array_equal(batches[0]["x"][:, 0], [0, 1, 2, 3])
    np.testing.assert_array_equal(batches[2]["x"][:2, :], np.full((2, width), [[8], [9]]))
    assert batches[2]["x"][2:].sum() == 0
    assert ds.element_spec["x"].shape.as_list() == [None, width]
    assert after - before < 256 * 1024**2, f"RSS grew by {(after - before) / 2**20:.0f} MiB"
    last = next(from_numpy(mm[-2:], batch_size=2).as_numpy_iterator())
    assert (last[1] == -1).all()


@pytest.mark.parametrize("dtype", [">f4", ">f8", ">i8", ">u2", ">c8"])
@pytest.mark.parametrize(
    "options",
    [{}, {"batch_size": 4}, {"batch_size": 4, "shuffle": True, "seed": 1}],
    ids=["rows", "batches", "shuffled"],
)
def test_from_numpy_big_endian_arrays_arrive_in_native_order(dtype, options):
    data = (np.arange(10) - 3).astype(dtype)
    ds = from_numpy({"a": data}, **options)
    assert ds.element_spec["a"].dtype == tf.as_dtype(data.dtype.newbyteorder("="))
    values = [np.atleast_1d(e["a"]) for e in as_list(ds)]
    got = np.concatenate(values)
    assert got.dtype.isnative
    if options.get("shuffle"):
        got, data = np.sort(got), np.sort(data)
    np.testing.assert_array_equal(got, data)


def test_from_numpy_streams_a_big_endian_memmap(tmp_path):
    mm = np.memmap(tmp_path / "be.f4", dtype=">f4", mode="w+", shape=(64, 3))
    mm[:] = np.arange(64 * 3).reshape(64, 3)
    ds = from_numpy({"x": mm}, batch_size=16)
    mm[0] = -1.0  # read lazily, batch by batch: a later write is visible
    got = np.concatenate([b["x"] for b in as_list(ds)])
    expected = np.arange(64 * 3, dtype=np.float32).reshape(64, 3)
    expected[0] = -1.0
    np.testing.assert_array_equal(got, expected)
    # chunks past 64 KiB take the core's copy path when native
    big = np.arange(20_000, dtype=">f4")
    batch = next(from_numpy(big, batch_size=20_000).as_numpy_iterator())
    np.testing.assert_array_equal(batch, big)


# ---------------------------------------------------------------------------------------------
# map_numpy
# ---------------------------------------------------------------------------------------------


def test_map_numpy_dict_in_dict_out_shapes_survive_batch():
    ds = tf.data.Dataset.from_tensor_slices(features(6))

    def fn(e):
        return {"flat": e["image"].reshape(-1).astype(np.float32), "twice": e["label"] * 2}

    mapped = map_numpy(ds, fn)
    assert mapped.element_spec["flat"] == tf.TensorSpec((6,), tf.float32)
    batched = mapped.batch(4)
    assert batched.element_spec["flat"].shape.as_list() == [None, 6]
    assert batched.element_spec["twice"] == tf.TensorSpec((None,), tf.int64)
    out = to_numpy(batched)
    np.testing.assert_array_equal(out["twice"], features(6)["label"] * 2)
    np.testing.assert_array_equal(out["flat"], features(6)["image"].reshape(6, 6))


def test_map_numpy_unpacks_tuples_like_dataset_map():
    ds = tf.data.Dataset.from_tensor_slices((np.arange(4.0), np.arange(4)))
    mapped = map_numpy(ds, lambda x, y: (x + y, np.stack([y, y])))
    assert mapped.element_spec[1].shape == (2,)
    assert [(float(a), b.tolist()) for a, b in as_list(mapped)][1] == (2.0, [1, 1])


def test_map_numpy_errors_in_fn_surface_with_their_message():
    def fn(x):
        if x == 2:
            raise ValueError("bad element 2 here")
        return x

    with pytest.raises(tf.errors.OpError, match="ValueError: bad element 2 here"):
        as_list(map_numpy(tf.data.Dataset.range(4), fn))


def test_map_numpy_checks_outputs_against_the_signature():
    ds = tf.data.Dataset.range(1, 4)
    growing = map_numpy(ds, lambda n: np.zeros(n, np.float32))  # inferred shape (1,)
    with pytest.raises(tf.errors.OpError, match=r"shape \(2,\).*None for dimensions that vary"):
        as_list(growing)
    sig = tf.TensorSpec((None,), tf.float32)
    free = map_numpy(ds, lambda n: np.zeros(n), output_signature=sig)  # float64 -> float32
    padded = next(free.padded_batch(3).as_numpy_iterator())
    assert padded.shape == (3, 3) and padded.dtype == np.float32
    with pytest.raises(tf.errors.OpError, match="does not match output_signature"):
        as_list(map_numpy(ds, lambda n: (n, n), output_signature=sig))


@pytest.mark.parametrize(
    ("value", "dtype", "shown"),
    [
        (np.int64(2**40), tf.int32, "1099511627776"),
        (np.int64(300), tf.int8, "300"),
        (np.int64(70000), tf.int16, "70000"),
        (np.float64(1e10), tf.float16, "10000000000.0"),
    ],
)
def test_map_numpy_never_wraps_or_overflows(value, dtype, shown):
    """map_numpy used to wrap silently (2**40 into int32 gave 0, 300 into int8 gave 44) and
    turn 1e10 into inf for float16; it now uses stream()'s checked conversion."""
    sig = tf.TensorSpec((2,), dtype)
    ds = map_numpy(tf.data.Dataset.range(1), lambda _: np.array([1, value]), output_signature=sig)
    with pytest.raises(
        tf.errors.OpError, match=rf"LeafOverflowError: leaf <root> has value {shown}"
    ):
        as_list(ds)
    fits = map_numpy(tf.data.Dataset.range(1), lambda _: np.array([1, 2]), output_signature=sig)
    assert as_list(fits)[0].tolist() == [1, 2]


def test_map_numpy_bad_inputs():
    with pytest.raises(ConversionError, match="empty"):
        map_numpy(tf.data.Dataset.range(0), lambda x: x)
    with pytest.raises(TypeError, match="callable"):
        map_numpy(tf.data.Dataset.range(2), 3)
    with pytest.raises(TypeError, match=r"tf.data.Dataset, not list"):
        map_numpy([1, 2], lambda x: x)
    with pytest.raises(TypeError, match="TensorSpec"):
        map_numpy(tf.data.Dataset.range(2), lambda x: x, output_signature=np.float32)


def test_docstring_examples_run(monkeypatch):
    for name in ("to_numpy", "from_numpy", "map_numpy", "load_memmap"):
        if not hasattr(fastbridge, name):  # until __init__ re-exports them
            monkeypatch.setattr(fastbridge, name, getattr(convert, name), raising=False)
    # The docstrings live in the package's modules; testmod(convert) sees only its own.
    names = [info.name for info in pkgutil.iter_modules(convert.__path__)]
    modules = [convert, *(importlib.import_module(f"{convert.__name__}.{n}") for n in names)]
    modules.append(importlib.import_module("fastbridge._npy"))  # the codec they write with
    results = [doctest.testmod(module, verbose=False) for module in modules]
    assert sum(r.failed for r in results) == 0 and sum(r.attempted for r in results) >= 15
