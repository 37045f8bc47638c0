"""How a stream reads each kind of source and resumes it: a replayed iterable, a Grain-style
iterator (``get_state()``/``set_state()``), a ``state_dict()``/``load_state_dict()`` source and
tf.data with and without ``checkpoint=True``, one process or several (each reading its share)."""

from __future__ import annotations

import json
import os
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from fastbridge import stream

grain = pytest.importorskip("grain")


def ints(batches) -> list[list[int]]:
    return [np.asarray(b).tolist() for b in batches]


def batches(n: int = 6, rows: int = 2) -> list[np.ndarray]:
    return [np.arange(rows * b, rows * b + rows, dtype=np.int32) for b in range(n)]


class Pages:
    """A ``state_dict()``/``load_state_dict()`` source (the Hugging Face ``IterableDataset``
    protocol): the state of the current pass lives on the object."""

    def __init__(self, n: int = 6) -> None:
        self.n, self.start, self.pos = n, 0, 0

    def __iter__(self):
        self.pos = self.start
        while self.pos < self.n:
            self.pos += 1
            yield np.arange(2 * self.pos - 2, 2 * self.pos, dtype=np.int32)

    def __len__(self) -> int:
        return self.n

    def state_dict(self):
        return {"pos": self.pos}

    def load_state_dict(self, state):
        self.start = state["pos"]


class Countdown:
    """A Grain-style iterator whose state is the batches it has left: 0 at its end."""

    def __init__(self, n: int = 4) -> None:
        self.left = n

    def __iter__(self):
        return self

    def __next__(self):
        if self.left == 0:
            raise StopIteration
        self.left -= 1
        return np.full(2, self.left, np.int32)

    def get_state(self):
        return self.left

    def set_state(self, state):
        self.left = state


def grain_pipeline():
    rows = grain.MapDataset.range(24).shuffle(seed=3).map(lambda x: np.full(2, x, np.int32))
    return rows.batch(4).to_iter_dataset()


def tf_pipeline(shuffle: bool = False):
    ds = tf.data.Dataset.range(22)
    if shuffle:
        ds = ds.shuffle(22, seed=7)
    return ds.batch(4)  # 6 batches, the last one of 2 rows


SOURCES = {
    "list": (lambda: batches(), {}),
    "grain": (grain_pipeline, {}),
    "state-dict": (Pages, {}),
    "tf": (tf_pipeline, {}),
    "tf-checkpoint": (lambda: tf_pipeline(shuffle=True), {"checkpoint": True}),
}


@pytest.mark.parametrize("kind", list(SOURCES))
@pytest.mark.parametrize("backend", ["numpy", "copy"])
def test_a_resume_from_a_saved_state_gives_the_batches_after_it(kind, backend):
    make, extra = SOURCES[kind]
    full = ints(stream(make(), backend="numpy", **extra))
    with stream(make(), backend=backend, prefetch=3, **extra) as s:
        got = ints(next(s) for _ in range(2))
        state = json.loads(json.dumps(s.state()))
    assert state["batches"] == 2
    assert (state["source"] is not None) == (kind in ("grain", "state-dict"))
    assert ("tf_iterator" in state) == (kind == "tf-checkpoint")
    with stream(make(), backend=backend, state=state, **extra) as s:
        got += ints(s)
    assert got == full


@pytest.mark.parametrize("kind", list(SOURCES))
def test_set_state_moves_a_stream_back_and_forth(kind):
    make, extra = SOURCES[kind]
    full = ints(stream(make(), backend="numpy", **extra))
    with stream(make(), backend="numpy", prefetch=2, **extra) as s:
        next(s)
        at_one = json.loads(json.dumps(s.state()))
        ints(next(s) for _ in range(3))
        s.set_state(at_one)
        assert ints(s) == full[1:]
        s.set_state(at_one)  # after the end too
        assert ints(next(s) for _ in range(2)) == full[1:3]


@pytest.mark.parametrize("checkpoint", [False, True])
def test_tf_data_resumes_from_a_state_of_the_other_checkpoint_setting(checkpoint):
    # A replayed state read with checkpoint=True, and a checkpoint state read without it.
    full = ints(stream(tf_pipeline(), backend="numpy"))
    with stream(tf_pipeline(), backend="numpy", prefetch=3, checkpoint=checkpoint) as s:
        got = ints(next(s) for _ in range(3))
        state = json.loads(json.dumps(s.state()))
    with stream(tf_pipeline(), backend="numpy", checkpoint=not checkpoint, state=state) as s:
        got += ints(s)
    assert got == full


@pytest.mark.parametrize("kind", ["list", "tf", "tf-checkpoint"])
def test_pad_last_resumed_at_the_short_last_batch_pads_to_the_saved_batch_size(kind):
    if kind == "list":
        make, extra = (lambda: [*batches(3, rows=4), np.arange(2, dtype=np.int32)]), {}
    else:
        make, extra = tf_pipeline, {"checkpoint": kind == "tf-checkpoint"}
    with stream(make(), backend="numpy", pad_last=True, **extra) as s:
        n = len(ints(b for b, _ in s)) - 1
    with stream(make(), backend="numpy", pad_last=True, prefetch=1, **extra) as s:
        for _ in range(n):
            next(s)
        state = json.loads(json.dumps(s.state()))
    assert state["batch_size"] == 4
    with stream(make(), backend="numpy", pad_last=True, state=state, **extra) as s:
        ((batch, mask),) = list(s)
    assert np.asarray(batch).shape == (4,)
    assert np.asarray(mask).tolist() == [True, True, False, False]


def test_a_one_shot_iterator_cannot_be_moved_but_a_grain_style_one_can():
    with stream(iter(batches()), backend="numpy") as s:
        next(s)
        state = s.state()
        with pytest.raises(ValueError, match="one-shot iterator"):
            s.set_state(state)
        assert ints([next(s)]) == [[2, 3]], "a refused set_state() leaves the stream as it was"
    with stream(Countdown(4), backend="numpy", prefetch=1) as s:
        next(s)
        state = s.state()
        assert ints(next(s) for _ in range(2)) == [[2, 2], [1, 1]]
        s.set_state(state)
        assert ints(s) == [[2, 2], [1, 1], [0, 0]]


def test_a_falsy_source_state_is_kept_when_a_resumed_stream_is_saved_again():
    # Countdown's state at its end is 0. A stream resumed there and saved again before
    # delivering a batch must keep it: with "source": None the next resume would replay, and
    # replaying a one-shot iterator skips batches it never delivered.
    with stream(Countdown(2), backend="numpy") as s:
        assert len(ints(s)) == 2
        state = s.state()
    assert state["source"] == 0
    with stream(Countdown(2), backend="numpy", state=state) as s:
        assert s.state()["source"] == 0
        assert ints(s) == []


@pytest.mark.parametrize(
    ("kind", "state", "message"),
    [
        ("tf", {"batches": 1, "source": {"i": 1}}, "this source is a tf.data.Dataset"),
        ("list", {"batches": 1, "tf_iterator": "AAAA", "pending": [], "skip": 0}, "not a tf"),
        ("list", {"batches": 7}, "has 6 batches"),
        ("tf", {"batches": 7}, "has 6 batches"),
        ("list", {"batches": 1, "source": {"i": 1}}, "has no get_state"),
        ("grain", {"batches": 1, "source": {"nope": 1}}, "refused by the source's set_state"),
        ("state-dict", {"batches": 1, "source": {"nope": 1}}, "refused by the source's load_"),
    ],
)
def test_a_state_that_does_not_fit_the_source_is_refused_at_construction(kind, state, message):
    make, extra = SOURCES[kind]
    with pytest.raises(ValueError, match=message):
        stream(make(), backend="numpy", state={"version": 2, **state}, **extra)


class _Closing:
    """An iterable whose iterators record that they were closed (as Grain's ``mp_prefetch``
    iterators stop their worker processes in ``close()``)."""

    def __init__(self) -> None:
        self.closed = 0

    def __iter__(self):
        return _ClosingIterator(self)


class _ClosingIterator:
    def __init__(self, owner: _Closing) -> None:
        self.owner, self.items = owner, iter(batches())

    def __iter__(self):
        return self

    def __next__(self):
        return next(self.items)

    def close(self):
        self.owner.closed += 1


def test_a_refused_state_closes_the_iterator_the_stream_opened():
    source = _Closing()
    with pytest.raises(ValueError, match="has no get_state"):
        stream(source, backend="numpy", state={"version": 2, "batches": 1, "source": {"i": 1}})
    assert source.closed == 1


@pytest.mark.parametrize(
    ("source", "options", "error", "message"),
    [
        ({"x": np.zeros(2)}, {"checkpoint": True}, TypeError, "mapping"),
        ("abc", {}, TypeError, "iterable of NumPy"),
        (batches(), {"checkpoint": True}, ValueError, "applies to tf.data"),
        (batches(), {"checkpoint": True, "service": "localhost:1"}, ValueError, "tf.data"),
        (batches(), {"service": "localhost:1"}, TypeError, "service= needs"),
    ],
)
def test_options_that_do_not_fit_the_source_are_refused(source, options, error, message):
    with pytest.raises(error, match=message):
        stream(source, backend="numpy", **options)


WORKER = textwrap.dedent(
    """
    import json, os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    process, port = int(sys.argv[1]), sys.argv[2]
    jax.distributed.initialize(
        coordinator_address=f"localhost:{port}", num_processes=2, process_id=process
    )
    import numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from fastbridge import stream
    sys.path.insert(0, sys.argv[3])
    from test_sources import Pages

    sharding = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P("data"))

    def gathered(s):
        return [multihost_utils.process_allgather(b, tiled=True).tolist() for b in s]

    # 7 batches: process 0 reads 0, 2, 4, 6 and process 1 reads 1, 3, 5 (both yield 3).
    results = {"all": gathered(stream(Pages(7), backend="numpy", sharding=sharding))}
    with stream(Pages(7), backend="numpy", sharding=sharding, prefetch=1) as s:
        results["first"] = gathered([next(s)])
        state = json.loads(json.dumps(s.state()))
    results["rest"] = gathered(stream(Pages(7), backend="numpy", sharding=sharding, state=state))
    print("RESULT", json.dumps(results), flush=True)
    """
)


def test_each_process_streams_its_share_of_a_state_dict_source_and_resumes():
    from test_multihost import run_two_processes

    here = os.path.dirname(os.path.abspath(__file__))
    outputs = run_two_processes(WORKER, here)
    local = [list(range(2 * b, 2 * b + 2)) for b in range(7)]
    want = [local[2 * k] + local[2 * k + 1] for k in range(3)]
    for result in outputs:
        assert result["all"] == want
        assert result["first"] + result["rest"] == want


def test_a_share_of_a_one_shot_iterator_still_refuses_to_move():
    """With several processes each reads a share of the source (``Source.shard``); whether
    set_state() can move it is asked of the user's iterator, not of the share's wrapper,
    which is re-iterable and would replay from wherever the iterator has got to."""
    import jax
    from fastbridge._options import StreamOptions
    from fastbridge._sources import make_source

    one_shot = iter([np.zeros(2, np.float32)] * 4)
    share = make_source(one_shot, StreamOptions(), jax.devices()[0]).shard(2, 0)
    with pytest.raises(ValueError, match="one-shot iterator"):
        share.check_rewind()
