"""Training-grade streams: sharding, padded last batch, checkpoints, metrics, dtype policy."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from conftest import ALL_BACKENDS
from fastbridge import stream
from fastbridge._testing import recorded_slots
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


@pytest.fixture(scope="module")
def mesh():
    devices = jax.devices()
    assert len(devices) == 8, "conftest asks XLA for 8 host devices"
    return Mesh(np.array(devices), ("data",))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_sharded_batches_are_global_arrays(backend, mesh):
    sharding = NamedSharding(mesh, P("data"))
    features = {
        "x": np.arange(32 * 3, dtype=np.float32).reshape(32, 3),
        "y": np.arange(32, dtype=np.int32),
    }
    ds = tf.data.Dataset.from_tensor_slices(features).batch(16)
    want = list(ds.as_numpy_iterator())
    with stream(ds, backend=backend, sharding=sharding) as batches:
        got = list(batches)
    for g, w in zip(got, want, strict=True):
        for key in ("x", "y"):
            assert g[key].sharding.is_equivalent_to(sharding, g[key].ndim)
            assert len(g[key].addressable_shards) == 8
            np.testing.assert_array_equal(np.asarray(g[key]), w[key])


def test_ring_shards_alias_their_slot_blocks(mesh):
    sharding = NamedSharding(mesh, P("data"))
    batch = np.arange(16 * 5, dtype=np.float32).reshape(16, 5)  # 40-byte shards: padded to 64
    source = [batch] * 3
    with recorded_slots() as ranges, stream(source, backend="ring", sharding=sharding) as batches:
        for b in batches:
            for shard in b.addressable_shards:
                pointer = shard.data.unsafe_buffer_pointer()
                assert pointer % 64 == 0
                assert any(a <= pointer < a + n for a, n in ranges.items()), "shard was copied"
                np.testing.assert_array_equal(np.asarray(shard.data), batch[shard.index])


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_pad_last_never_recompiles(backend):
    traces = 0

    @jax.jit
    def step(batch, mask):
        nonlocal traces
        traces += 1
        return jnp.sum(jnp.where(mask, batch["x"], 0.0))

    ds = tf.data.Dataset.from_tensor_slices({"x": np.arange(10, dtype=np.float32)}).batch(4)
    with stream(ds, backend=backend, pad_last=True) as batches:
        results = []
        masks = []
        for batch, mask in batches:
            assert batch["x"].shape == (4,)
            results.append(float(step(batch, mask)))
            masks.append(np.asarray(mask).tolist())
    assert traces == 1, "the short last batch triggered a recompile"
    assert results == [6.0, 22.0, 17.0]
    assert masks[-1] == [True, True, False, False]
    assert masks[0] == [True] * 4


def test_pad_last_checks_leading_dimensions():
    items = [{"a": np.zeros((4, 2)), "b": np.zeros(3)}]
    with pytest.raises(ValueError, match="share its leading"):
        with stream(items, backend="numpy", pad_last=True) as s:
            next(s)
    with pytest.raises(ValueError, match="batch_size= only applies with pad_last=True"):
        stream(items, batch_size=4)


class CountingSource:
    """A plain iterable whose iterator offers get_state()/set_state() (Grain-style)."""

    def __init__(self, n):
        self.n = n

    def __iter__(self):
        return CountingIterator(self.n)


class CountingIterator:
    def __init__(self, n):
        self.n, self.i = n, 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.i >= self.n:
            raise StopIteration
        self.i += 1
        return {"v": np.full(3, self.i - 1, np.int32)}

    def get_state(self):
        return {"i": self.i}

    def set_state(self, state):
        self.i = state["i"]


_RESUME = textwrap.dedent(
    """
    import json, sys
    import numpy as np, tensorflow as tf
    from fastbridge import stream
    sys.path.insert(0, {testdir!r})
    from test_training import CountingSource, pipeline
    for saved in sys.argv[1:]:  # one state per cut, each resumed by a stream of its own
        state = json.loads(saved)
        source = pipeline() if state.pop("kind") == "tf" else CountingSource(40)
        with stream(source, backend={backend!r}, prefetch=3, state=state) as s:
            print(json.dumps([np.asarray(b["v"]).tolist() for b in s]))
    """
)


def pipeline():
    ds = tf.data.Dataset.range(60).shuffle(20, seed=7, reshuffle_each_iteration=False)
    return ds.map(lambda i: {"v": tf.fill([3], i * 3)}).batch(2)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ring", "numpy", "direct", "copy"])
@pytest.mark.parametrize("kind", ["tf", "iterable"])
def test_state_resumes_exactly_in_a_new_process(backend, kind, tmp_path):
    make = pipeline if kind == "tf" else (lambda: CountingSource(40))
    with stream(make(), backend=backend, prefetch=3) as s:
        full = [np.asarray(b["v"]).tolist() for b in s]
    rng = np.random.default_rng(len(backend) + len(kind))
    cuts = sorted(rng.choice(np.arange(1, len(full) - 1), 2, replace=False))
    befores, saved = [], []
    for cut in cuts:
        with stream(make(), backend=backend, prefetch=3) as s:
            befores.append([np.asarray(next(s)["v"]).tolist() for _ in range(cut)])
            state = s.state()  # the producer has prefetched beyond `cut` by now
        saved.append(json.dumps({**state, "kind": kind}))
    script = _RESUME.format(testdir=str(__import__("pathlib").Path(__file__).parent),
                            backend=backend)  # fmt: skip
    # One new process resumes every state (importing TensorFlow and JAX once, not per cut).
    out = subprocess.run(
        [sys.executable, "-c", script, *saved], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    afters = [json.loads(line) for line in out.stdout.strip().splitlines()[-len(cuts) :]]
    for cut, before, after in zip(cuts, befores, afters, strict=True):
        assert before + after == full, f"cut at {cut}"


def test_stats_rates_summary_and_progress(capsys):
    data = [np.zeros((256, 256), np.float32)] * 20
    with stream(data, backend="ring", progress=True) as s:
        for _ in s:
            pass
        stats = s.stats
        text = s.summary()
    assert stats.batches == 20 and stats.bytes == 20 * 256 * 256 * 4
    assert stats.batches_per_second > 0 and stats.gigabytes_per_second > 0
    assert 0 <= stats.input_bound_fraction <= 1
    assert "20 batches" in text and "input-bound" in text
    err = capsys.readouterr().err
    assert "fastbridge[ring]" in err and "20/20" in err


def test_summary_names_what_each_backend_has():
    data = [np.zeros((4, 4), np.float64)] * 3  # narrowed: direct takes slots for it
    texts = {}
    for backend in ("ring", "direct"):
        with stream(data, backend=backend) as s:
            list(s)
            texts[backend] = s.summary()
    assert "The ring used" in texts["ring"]
    assert "ring" not in texts["direct"] and "Its narrowing used" in texts["direct"]


def test_dtype_policy():
    items = [{"d": np.arange(3, dtype=np.float64), "i": np.arange(3, dtype=np.int32)}]
    with stream(items, backend="ring", dtypes={"['i']": "float16"}) as s:
        (b,) = list(s)
    assert b["d"].dtype == jnp.float32 and b["i"].dtype == jnp.float16
    np.testing.assert_array_equal(np.asarray(b["i"]), [0, 1, 2])
    with pytest.raises(ValueError, match=r"dtypes='keep'.*x64"):
        stream(items, dtypes="keep")
    with pytest.raises(ValueError, match="dtypes must be 'canonical', 'keep' or a mapping"):
        stream(items, dtypes="wide")
    with pytest.raises(ValueError, match=r"do not have: \['zzz'\]"):
        with stream(items, backend="numpy", dtypes={"['zzz']": "float32"}) as s:
            next(s)


_RESUME_CHECKPOINT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from fastbridge import stream
    sys.path.insert(0, {testdir!r})
    from test_training import unseeded_pipeline
    state = json.loads(sys.stdin.read())
    with stream(unseeded_pipeline(), backend={backend!r}, state=state, checkpoint=True) as s:
        print(json.dumps([np.asarray(b["v"]).tolist() for b in s]))
    """
)


def unseeded_pipeline():
    """Not deterministic: replaying it would not reproduce the same batches."""
    ds = tf.data.Dataset.range(60).shuffle(30).map(lambda i: {"v": tf.fill([2], i)})
    return ds.batch(3)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ring", "direct", "copy"])
def test_checkpoint_restores_the_tf_iterator_exactly(backend):
    """checkpoint=True saves tf.data's own iterator state (shuffle buffer included) and the
    batches read ahead: the restored stream in a new process continues exactly as the original
    one does, although the pipeline's shuffle is unseeded."""
    cut = int(np.random.default_rng(len(backend)).integers(2, 15))
    with stream(unseeded_pipeline(), backend=backend, prefetch=3, checkpoint=True) as s:
        before = [np.asarray(next(s)["v"]).tolist() for _ in range(cut)]
        state = s.state()
        assert state["batches"] == cut and "tf_iterator" in state
        rest = [np.asarray(b["v"]).tolist() for b in s]
    script = _RESUME_CHECKPOINT.format(
        testdir=str(__import__("pathlib").Path(__file__).parent), backend=backend
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(state),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    resumed = json.loads(out.stdout.strip().splitlines()[-1])
    assert resumed == rest
    seen = sorted(v[0] for batch in before + resumed for v in batch)
    assert seen == list(range(60)), "every element exactly once across the cut"


def test_checkpoint_needs_a_tf_dataset():
    with pytest.raises(ValueError, match=r"checkpoint=True applies to tf\.data sources"):
        stream([np.zeros(1)], checkpoint=True)
