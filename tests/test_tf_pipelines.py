"""tf.data pipelines that run Python code or random ops: which backend ``auto`` picks, and what
``checkpoint=True`` promises for them (measured facts about TensorFlow 2.21 on CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import warnings

import fastbridge
import numpy as np
import pytest
import tensorflow as tf
from conftest import ALL_BACKENDS
from fastbridge import FastbridgeWarning, stream
from fastbridge._tfdata import pipeline_facts


def _aligned(n: int) -> np.ndarray:
    raw = np.zeros(n * 4 + 64, np.uint8)
    start = (-raw.ctypes.data) % 64
    return raw[start : start + n * 4].view(np.float32)


def _refilling(count: int) -> tf.data.Dataset:
    """A generator that refills and re-yields one 64-byte-aligned buffer, which TensorFlow
    aliases instead of copying. Prefetching inside tf.data is off, so that each element is
    produced only when it is read and the stream's copy of it is correct."""
    buffer = _aligned(1024)

    def generate():
        for i in range(count):
            buffer[:] = i
            yield buffer

    ds = tf.data.Dataset.from_generator(
        generate, output_signature=tf.TensorSpec([1024], tf.float32)
    )
    options = tf.data.Options()
    options.autotune.enabled = False
    options.experimental_optimization.inject_prefetch = False
    return ds.with_options(options)


def test_auto_copies_batches_from_a_generator_that_refills_its_buffer():
    """TensorFlow aliases the generator's buffer: handed to JAX as is (direct), batches the
    consumer holds change as the generator refills it. auto copies such pipelines into slots,
    so held batches keep the values they had."""
    with stream(_refilling(6), prefetch=1) as s:
        assert s.backend == "ring"
        held = [next(s) for _ in range(6)]
    assert [float(np.asarray(b)[0]) for b in held] == [0, 1, 2, 3, 4, 5]
    with pytest.warns(FastbridgeWarning, match=r"backend='direct' .* Python code"):
        s = stream(_refilling(6), backend="direct", prefetch=1)
    with s:
        held = [next(s) for _ in range(6)]
    # The caveat the warning states, observed: the held batches all show the last refill.
    assert [float(np.asarray(b)[0]) for b in held] != [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    ("make", "python"),
    [
        (lambda: tf.data.Dataset.range(8).batch(2), False),
        (lambda: tf.data.Dataset.from_tensor_slices(np.arange(8)).map(lambda x: x * 2), False),
        (lambda: fastbridge.from_numpy(np.arange(8), batch_size=2), False),
        (
            lambda: tf.data.Dataset.range(8).map(
                lambda x: tf.py_function(lambda v: v, [x], tf.int64)
            ),
            True,
        ),
        (lambda: fastbridge.map_numpy(tf.data.Dataset.range(8), lambda v: v + 1), True),
        (lambda: _refilling(2), True),
    ],
)
def test_auto_aliases_only_pipelines_without_python_code(make, python):
    facts = pipeline_facts(make())
    assert facts.runs_python == python, facts
    with stream(make()) as s:
        assert s.backend == ("ring" if python else "direct")


def test_checkpoint_refuses_from_generator():
    with pytest.raises(ValueError, match=r"cannot save the state of a Dataset\.from_generator"):
        stream(_refilling(2), checkpoint=True)


@pytest.mark.parametrize(
    ("make", "warns"),
    [
        (lambda: tf.data.Dataset.range(10).shuffle(10).repeat(3), "unseeded shuffle"),
        (lambda: tf.data.Dataset.range(10).shuffle(10).batch(2).repeat(), "unseeded shuffle"),
        (lambda: tf.data.Dataset.range(10).map(lambda x: tf.random.uniform([])), "RandomUniform"),
        (lambda: tf.data.Dataset.range(10).shuffle(10, seed=1).repeat(3), None),
        (lambda: tf.data.Dataset.range(10).repeat(3).shuffle(10), None),
        (lambda: tf.data.Dataset.range(10).shuffle(10), None),
        (lambda: tf.data.Dataset.range(10).shuffle(10, seed=1).batch(4).repeat(3), "batched"),
        (lambda: tf.data.Dataset.range(9).shuffle(9, seed=1).padded_batch(4).repeat(), "batched"),
        (lambda: tf.data.Dataset.range(10).shuffle(10, seed=1).repeat(3).batch(4), None),
        (lambda: tf.data.Dataset.range(10).shuffle(10, seed=1).batch(4, True).repeat(3), None),
        (
            lambda: (
                tf.data.Dataset.range(10)
                .shuffle(10, seed=1, reshuffle_each_iteration=False)
                .batch(4)
                .repeat(3)
            ),
            None,
        ),
        (
            lambda: (
                tf.data.Dataset.range(10)
                .shuffle(10, seed=1)
                .batch(4, num_parallel_calls=2, deterministic=True)
                .repeat(3)
            ),
            None,
        ),
    ],
)
def test_checkpoint_says_which_pipelines_it_cannot_resume_exactly(make, warns):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stream(make(), checkpoint=True).close()
    ours = [w for w in caught if issubclass(w.category, FastbridgeWarning)]
    if warns is None:
        assert not ours, [str(w.message) for w in ours]
    else:
        assert len(ours) == 1 and warns in str(ours[0].message), [str(w.message) for w in ours]


RESUME = """
import json, sys, warnings
import numpy as np, tensorflow as tf
from fastbridge import stream
warnings.simplefilter("ignore")
ds = tf.data.Dataset.range(10).shuffle(10, seed={seed}).repeat(3)
state = json.loads(sys.stdin.read())
with stream(ds, backend="{backend}", checkpoint=True, state=state) as s:
    print(json.dumps([int(np.asarray(b)) for b in s]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ring", "direct"])
@pytest.mark.parametrize("seed", [False, True])
def test_what_the_reshuffle_warning_says_is_what_happens(backend, seed):
    """An unseeded shuffle under repeat: a resume in a new process gets the rest of the epoch
    exactly and later epochs in another order; with a seed, every epoch is exact."""
    ds = tf.data.Dataset.range(10).shuffle(10, seed=5 if seed else None).repeat(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = stream(ds, backend=backend, checkpoint=True, prefetch=2)
    cut = 4
    with s:
        full = [int(np.asarray(next(s))) for _ in range(cut)]
        state = json.dumps(s.state())
        full += [int(np.asarray(b)) for b in s]
    out = subprocess.run(
        [sys.executable, "-c", RESUME.format(backend=backend, seed=5 if seed else None)],
        input=state,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    resumed = json.loads(out.stdout.strip().splitlines()[-1])
    assert resumed[: 10 - cut] == full[cut:10], "the rest of the current epoch is exact"
    if seed:
        assert resumed == full[cut:]
    else:
        assert resumed != full[cut:], "later epochs come in another order (as the warning says)"


def _no_injected_prefetch(ds):
    # tf.data's injected prefetch reads ahead by timing; without it the save points are fixed.
    options = tf.data.Options()
    options.experimental_optimization.inject_prefetch = False
    return ds.with_options(options)


def _resumes_wrong_at(make) -> list[int]:
    """The batch counts after which a tf.train.Checkpoint of make()'s iterator, restored into
    a new one, does not give the rest of the uninterrupted run (TensorFlow alone)."""
    full = [b.numpy() for b in make()]
    wrong = []
    for k in range(1, len(full)):
        iterator = iter(make())
        for _ in range(k):
            next(iterator)
        saved = tf.train.Checkpoint(it=iterator)
        restored = iter(make())
        with tempfile.TemporaryDirectory() as folder:
            tf.train.Checkpoint(it=restored).read(saved.write(f"{folder}/c")).expect_partial()
        rest = [b.numpy() for b in restored]
        if len(rest) != len(full) - k or any(
            not np.array_equal(a, b) for a, b in zip(rest, full[k:], strict=False)
        ):
            wrong.append(k)
    return wrong


def test_the_tf_data_fact_behind_the_batched_reshuffle_warning_still_holds():
    # If a TensorFlow release fixes this, the warning is obsolete: this test says so.
    def batched_then_repeated():
        ds = tf.data.Dataset.range(20).shuffle(20, seed=0).batch(8).repeat(3)
        return _no_injected_prefetch(ds)

    def repeated_then_batched():
        ds = tf.data.Dataset.range(20).shuffle(20, seed=0).repeat(3).batch(8)
        return _no_injected_prefetch(ds)

    assert _resumes_wrong_at(batched_then_repeated) == [3, 6], "wrong at each epoch's end"
    assert _resumes_wrong_at(repeated_then_batched) == []


@pytest.mark.parametrize("backend", ["ring", "direct"])
def test_the_order_the_warning_recommends_resumes_exactly_from_every_batch(backend):
    def make():
        return tf.data.Dataset.range(20).shuffle(20, seed=0).repeat(3).batch(8)

    with stream(make(), backend=backend, checkpoint=True, prefetch=3) as s:
        full = [np.asarray(b).tolist() for b in s]
    for k in range(1, len(full)):
        with stream(make(), backend=backend, checkpoint=True, prefetch=3) as s:
            for _ in range(k):
                next(s)
            state = json.loads(json.dumps(s.state()))
        with stream(make(), backend=backend, checkpoint=True, state=state) as s:
            assert [np.asarray(b).tolist() for b in s] == full[k:], f"resumed after {k}"


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_checkpoint_false_never_warns_about_shuffles(backend):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FastbridgeWarning)
        stream(tf.data.Dataset.range(10).shuffle(10).repeat(3), backend=backend).close()
