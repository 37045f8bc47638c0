"""Hugging Face ``datasets`` as sources: the recipes of docs/sources.md, run as written, give
the tutorial loop's batches bit for bit, resume exactly, and fail clearly on ragged columns."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import ALL_BACKENDS
from fastbridge import SourceError, StructureChangedError, UnsupportedLeafError, stream
from recipes import assert_bitwise, run_recipes, tutorial

datasets = pytest.importorskip("datasets")
pytest.importorskip("tensorflow")


def run(*names: str, **given) -> dict:
    """Run the ``step`` block, the setup and then ``names`` in one namespace, as a reader would."""
    return run_recipes(dict(given), "step", "hf-setup", *names)


def labels(batches) -> list:
    return [np.asarray(b["label"]).tolist() for b in batches]


def test_the_numpy_recipe_gives_the_tutorial_batches_narrowed_and_bitwise():
    ns = run("hf-numpy")
    want = tutorial(ns["train"].iter(batch_size=32))
    assert_bitwise(ns["seen"], want)
    first, last = ns["seen"][0], ns["seen"][-1]
    assert (first["image"].dtype, first["label"].dtype) == (np.float32, np.int32)
    assert first["image"].shape == (32, 8, 8) and last["label"].shape == (4,)
    # Hugging Face casts the float64 column itself; the stream narrows the int64 labels.
    assert next(ns["train"].iter(batch_size=32))["label"].dtype == np.int64


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_every_backend_gives_the_tutorial_batches(backend):
    ns = run()
    train = ns["ds"].with_format("numpy", columns=["image", "label"])
    got = list(stream(train.iter(batch_size=32), backend=backend, prefetch=2))
    assert_bitwise(got, tutorial(train.iter(batch_size=32)))


def test_a_text_column_passes_through_as_a_numpy_str_array():
    ns = run()
    train = ns["ds"].with_format("numpy", columns=["text", "label"])
    with stream(train.iter(batch_size=32)) as batches:
        batch = next(batches)
    assert isinstance(batch["text"], np.ndarray) and batch["text"].dtype.kind == "U"
    assert batch["text"].tolist() == [f"example {i}" for i in range(32)]
    assert isinstance(batch["label"], jax.Array)


def test_with_x64_on_64_bit_columns_stay_64_bit_as_jnp_asarray_keeps_them():
    ns = run()
    train = ns["ds"].with_format("numpy", columns=["image", "label"])
    jax.config.update("jax_enable_x64", True)
    try:
        got = list(stream(train.iter(batch_size=32)))
        want = tutorial(train.iter(batch_size=32))
    finally:
        jax.config.update("jax_enable_x64", False)
    assert_bitwise(got, want)
    assert (got[0]["image"].dtype, got[0]["label"].dtype) == (np.float32, np.int64)


def test_a_generator_resumes_by_replaying_and_cannot_be_moved_in_place():
    ns = run()
    train = ns["ds"].with_format("numpy", columns=["image", "label"])
    with stream(train.iter(batch_size=16), prefetch=3) as s:
        got = labels(next(s) for _ in range(2))
        saved = json.loads(json.dumps(s.state()))
        with pytest.raises(ValueError, match="one-shot iterator"):
            s.set_state(saved)
    assert saved["source"] is None  # nothing of the source's own: a replay
    with stream(train.iter(batch_size=16), state=saved) as s:
        got += labels(s)
    assert got == labels(train.iter(batch_size=16))


def test_the_resume_recipe_resumes_through_the_iterable_dataset_state():
    ns = run("hf-resume")
    full = labels(ns["batches_of"](ns["ds"]))
    assert len(full) == 13 and labels(ns["seen"]) == full  # five, then the other eight
    saved = json.loads(ns["saved"])
    assert saved["batches"] == 5 and saved["source"]["examples_iterable"]
    # In place: set_state() moves a running stream back to the saved position.
    with stream(ns["batches_of"](ns["ds"]), prefetch=3) as s:
        rest = labels(s)
        s.set_state(saved)
        assert labels(s) == full[5:] and len(rest) == 13


def write_files(ns: dict, tmp_path: Path) -> dict:
    train = ns["ds"].select_columns(["image", "label"])
    train.to_parquet(str(tmp_path / "train.parquet"))
    train.to_json(str(tmp_path / "train.jsonl"))
    return {"parquet": tmp_path / "train.parquet", "json": tmp_path / "train.jsonl"}


@pytest.mark.parametrize("kind", ["parquet", "json"])
def test_local_files_stream_and_resume_exactly(tmp_path, kind):
    ns = run("hf-resume")
    path = write_files(ns, tmp_path)[kind]

    def batches():
        files = datasets.load_dataset(kind, data_files=str(path), split="train", streaming=True)
        return files.batch(8).with_format("numpy")

    full = list(batches())
    assert_bitwise(list(stream(batches())), tutorial(full))
    with stream(batches(), prefetch=4) as s:
        got = labels(next(s) for _ in range(3))
        saved = json.loads(json.dumps(s.state()))
    with stream(batches(), state=saved) as s:
        got += labels(s)
    assert got == labels(full)


def test_a_shuffle_buffer_is_not_in_hugging_face_state_so_a_resume_loses_its_rows():
    # What the recipe warns about (datasets 5.2.0): shuffle the Dataset first instead.
    ns = run("hf-resume")

    def batches():
        iterable = ns["ds"].select_columns(["label"]).to_iterable_dataset(num_shards=1)
        shuffled = iterable.with_format("numpy").shuffle(seed=3, buffer_size=16)
        return shuffled.batch(8)

    with stream(batches()) as s:
        got = labels(next(s) for _ in range(5))
        saved = s.state()
    with stream(batches(), state=saved) as s:
        got += labels(s)
    rows = sorted(r for b in got for r in b)
    assert len(rows) < 100  # the buffered rows are gone
    # Shuffling the Dataset first is a fixed permutation, and resumes exactly.
    shuffled = ns["ds"].shuffle(seed=0)
    full = labels(ns["batches_of"](shuffled))
    with stream(ns["batches_of"](shuffled)) as s:
        got = labels(next(s) for _ in range(5))
        saved = s.state()
    with stream(ns["batches_of"](shuffled), state=saved) as s:
        got += labels(s)
    assert got == full


def test_the_to_tf_dataset_recipe_gives_the_tutorial_batches_and_resumes():
    ns = run("hf-tf")
    want = tutorial(ns["train_tf"].as_numpy_iterator())
    assert_bitwise(ns["seen"], want)
    assert (want[0][0].dtype, want[0][1].dtype) == (np.float32, np.int32)
    for checkpoint in (True, False):  # the iterator's own state, or a replay
        with stream(ns["train_tf"], checkpoint=checkpoint, prefetch=3) as s:
            assert s.backend == "ring"  # a py_function fetches the rows
            got = [np.asarray(next(s)[1]).tolist() for _ in range(2)]
            saved = json.loads(json.dumps(s.state()))
        assert ("tf_iterator" in saved) == checkpoint
        with stream(ns["train_tf"], checkpoint=checkpoint, state=saved) as s:
            got += [np.asarray(label).tolist() for _, label in s]
        assert got == [np.asarray(label).tolist() for _, label in want]


def test_the_ragged_recipe_says_ragged_and_pads(capsys):
    ns = run("hf-ragged")
    message = capsys.readouterr().out
    assert "leaf ['tokens'] is ragged" in message and "pad or bucket" in message
    tokens = ns["tokens"].with_format("numpy")
    assert_bitwise(ns["seen"], tutorial(tokens.iter(batch_size=32)))
    assert ns["seen"][0]["tokens"].shape == (32, 8)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_rows_of_one_length_in_the_first_batch_then_ragged_say_ragged(backend):
    # Hugging Face stacks the first batch ([2, 2] rows) into an int64 array, then gives an
    # object array of rows: that used to read "changed dtype from int64 to object".
    ds = datasets.Dataset.from_dict({"ids": [[1, 2], [3, 4], [5], [6, 7, 8]]})
    with stream(ds.with_format("numpy").iter(batch_size=2), backend=backend) as s:
        assert next(s)["ids"].shape == (2, 2)
        with pytest.raises(UnsupportedLeafError, match=r"leaf \['ids'\] is ragged.*pad or bucket"):
            next(s)


def test_python_lists_without_the_numpy_format_say_to_yield_arrays():
    ds = datasets.Dataset.from_dict({"ids": [[1, 2], [3, 4], [5], [6, 7, 8]]})
    with stream(ds.iter(batch_size=2)) as s:
        next(s)
        with pytest.raises(StructureChangedError, match=r'with_format\("numpy"\)'):
            next(s)


def test_a_ragged_column_in_to_tf_dataset_fails_in_hugging_face_collation():
    ns = run()
    ragged = ns["ds"].to_tf_dataset(batch_size=32, columns="tokens", shuffle=False)
    with stream(ragged) as s, pytest.raises(SourceError, match="same shape"):
        next(s)


@pytest.mark.parametrize("build", ["from_generator", "json"])
def test_datasets_from_a_generator_or_local_files_are_sources_like_any_other(tmp_path, build):
    ns = run()
    train = ns["ds"].select_columns(["image", "label"])
    if build == "from_generator":
        rows = train.with_format("numpy")
        made = datasets.Dataset.from_generator(
            lambda: iter(rows), features=train.features, cache_dir=str(tmp_path)
        )
    else:
        train.to_json(str(tmp_path / "train.jsonl"))
        made = datasets.load_dataset(
            "json", data_files=str(tmp_path / "train.jsonl"), split="train",
            cache_dir=str(tmp_path / "cache"),
        )  # fmt: skip
    numpy_ds = made.with_format("numpy")
    got = list(stream(numpy_ds.iter(batch_size=32)))
    assert_bitwise(got, tutorial(numpy_ds.iter(batch_size=32)))
    if build == "from_generator":  # JSON keeps 10 digits of a float (pandas' to_json)
        assert_bitwise(got, tutorial(train.with_format("numpy").iter(batch_size=32)))


def test_an_iterable_dataset_resumes_through_its_state_dict_under_every_backend():
    ns = run()
    rows = ns["ds"].select_columns(["image", "label"])

    def batches():
        return rows.to_iterable_dataset(num_shards=4).batch(8).with_format("numpy")

    full = tutorial(batches())
    for backend in ALL_BACKENDS:
        with stream(batches(), prefetch=3, backend=backend) as s:
            got = [next(s) for _ in range(4)]
            saved = json.loads(json.dumps(s.state()))
        assert saved["source"]["examples_iterable"], "the source's own state, not a replay"
        with stream(batches(), state=saved, backend=backend) as s:
            got += list(s)
        assert_bitwise(got, full)


def test_a_state_of_another_source_fails_at_the_first_batch_and_delivers_none():
    # datasets 5.2.0 takes any dict in load_state_dict() and fails when iterated: the stream
    # says which batch and why, and delivers nothing from a position it does not know.
    ns = run()
    iterable = ns["ds"].to_iterable_dataset(num_shards=4).batch(8).with_format("numpy")
    state = {"version": 2, "batches": 2, "source": {"nonsense": 1}}
    with stream(iterable, state=state) as s, pytest.raises(SourceError, match="at batch 2"):
        next(s)
