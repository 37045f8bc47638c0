"""TensorFlow Datasets as sources: the recipes of docs/sources.md, run as written on a builder
prepared from local data, give the tutorial loop's batches bit for bit, resume exactly with
``checkpoint=True``, and fail clearly on ragged features."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import ALL_BACKENDS
from fastbridge import SourceError, UnsupportedLeafError, stream
from recipes import assert_bitwise, run_recipes, tutorial

tf = pytest.importorskip("tensorflow")
tfds = pytest.importorskip("tensorflow_datasets")  # slow to import: once per module


@pytest.fixture(scope="module")
def prepared():
    """The setup block run once: the builder prepared into its own data_dir."""
    namespace: dict = {}
    run_recipes(namespace, "tfds-setup")
    yield namespace
    shutil.rmtree(namespace["data_dir"], ignore_errors=True)


def run(prepared: dict, *names: str) -> dict:
    """``names`` run after the step and setup blocks, as a reader would run them."""
    return run_recipes(dict(prepared), "step", *names)


def test_the_builder_is_prepared_locally_with_the_documented_dtypes(prepared):
    spec = prepared["builder"].as_dataset(split="train").element_spec
    assert (spec["image"].dtype, spec["label"].dtype) == (tf.float64, tf.int64)
    assert spec["text"].dtype == tf.string and spec["tokens"].shape.as_list() == [None]
    assert prepared["builder"].info.splits["train"].num_examples == 100
    assert len(list(prepared["builder"].as_dataset(split="train[:80%]"))) == 80


def test_the_batches_recipe_resumes_exactly_with_the_shuffle_buffer(prepared):
    ns = run(prepared, "tfds-batches")
    full = tutorial(ns["pipeline"](ns["builder"]).as_numpy_iterator())
    assert_bitwise(ns["seen"], full)  # one batch, then the other three after the resume
    assert (full[0]["image"].dtype, full[0]["label"].dtype) == (np.float32, np.int32)
    assert json.loads(ns["saved"])["tf_iterator"]  # tf.data's own iterator state
    labels = [int(v) for b in full for v in np.asarray(b["label"])]
    assert sorted(labels) == sorted(i % 10 for i in range(100))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_every_backend_gives_the_tutorial_batches(prepared, backend):
    ds = prepared["builder"].as_dataset(split="train", shuffle_files=False)
    ds = ds.map(lambda e: {"image": e["image"], "label": e["label"]}).batch(32)
    with stream(ds, backend=backend, prefetch=2) as s:
        got = list(s)
    assert_bitwise(got, tutorial(ds.as_numpy_iterator()))
    with stream(ds) as s:
        assert s.backend == "direct"  # tf.data's own ops only: TensorFlow's buffers, no copy


def test_the_as_numpy_recipe_gives_the_tutorial_batches_and_replays(prepared):
    ns = run(prepared, "tfds-numpy")
    assert_bitwise(ns["seen"], tutorial(ns["numpy_batches"]))
    with stream(ns["numpy_batches"]) as s:
        assert s.backend == "ring"  # a NumPy iterable: copied into slots
        first = [np.asarray(next(s)[1]).tolist() for _ in range(2)]
        saved = json.loads(json.dumps(s.state()))
    assert saved["source"] is None and "tf_iterator" not in saved  # a replay
    with stream(ns["numpy_batches"], state=saved) as s:
        rest = [np.asarray(label).tolist() for _, label in s]
    assert first + rest == [label.tolist() for _, label in ns["numpy_batches"]]


def test_the_ragged_recipe_says_ragged_and_pads(prepared, capsys):
    ns = run(prepared, "tfds-ragged")
    message = capsys.readouterr().out
    assert "leaf ['tokens'] is ragged (a RaggedTensor)" in message and "pad or bucket" in message
    batches = list(ns["padded"].as_numpy_iterator())
    assert_bitwise(
        [{"tokens": b["tokens"]} for b in ns["seen"]],
        tutorial({"tokens": b["tokens"]} for b in batches),
    )
    text = ns["seen"][0]["text"]
    assert isinstance(text, np.ndarray) and text.tolist() == batches[0]["text"].tolist()
    assert isinstance(text[0], bytes) and ns["seen"][0]["tokens"].shape == (32, 8)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_a_ragged_batch_says_ragged_on_every_backend_and_through_as_numpy(prepared, backend):
    examples = prepared["builder"].as_dataset(split="train", shuffle_files=False)
    ragged = examples.map(lambda e: {"tokens": e["tokens"]}).ragged_batch(4)
    for source in (ragged, tfds.as_numpy(ragged)):  # as_numpy leaves a tf.RaggedTensor
        with pytest.raises(UnsupportedLeafError, match=r"leaf \['tokens'\] is ragged.*pad or"):
            with stream(source, backend=backend) as s:
                next(s)


def test_a_variable_length_feature_cannot_be_batched_by_tf_data(prepared):
    examples = prepared["builder"].as_dataset(split="train", shuffle_files=False)
    for element in (lambda e: e["tokens"], lambda e: {"tokens": e["tokens"]}):
        with stream(examples.map(element).batch(4)) as s:
            with pytest.raises(SourceError, match=r"Cannot (batch tensors|add tensor to the ba)"):
                next(s)


def test_a_sparse_leaf_says_sparse_and_how_to_densify_it():
    sparse = tf.sparse.from_dense(tf.constant([[0, 1], [2, 0]]))
    with stream(tf.data.Dataset.from_tensors({"s": sparse}), backend="direct") as s:
        with pytest.raises(UnsupportedLeafError, match=r"leaf \['s'\] is sparse.*to_dense"):
            next(s)
