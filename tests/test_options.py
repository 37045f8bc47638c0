"""The options object: declared once, checked once, and stream()'s signature derived from it."""

from __future__ import annotations

import dataclasses
import inspect
import json
import threading
import time

import fastbridge
import numpy as np
import pytest
from conftest import ALL_BACKENDS, SLOT_BACKENDS
from fastbridge import Checkpointable, Stream, StreamOptions, stream


def data(n: int = 12) -> list[dict[str, np.ndarray]]:
    return [{"x": np.full((2, 3), i, np.float32)} for i in range(n)]


def values(batches) -> list[float]:
    return [float(b["x"][0, 0]) for b in batches]


def test_stream_signature_is_the_options_fields():
    params = list(inspect.signature(stream).parameters.values())
    assert params[0].name == "source"
    assert params[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD  # stream(source=ds) too
    fields = dataclasses.fields(StreamOptions)
    assert [p.name for p in params[1:]] == [f.name for f in fields]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[1:])
    assert [p.default for p in params[1:]] == [f.default for f in fields]


def test_every_option_is_documented_in_stream():
    doc = inspect.getdoc(stream) or ""
    missing = [f.name for f in dataclasses.fields(StreamOptions) if f"  {f.name}: " not in doc]
    assert not missing, f"stream() does not document {missing}"


def test_unknown_and_positional_options_are_type_errors_naming_stream():
    with pytest.raises(TypeError, match=r"stream\(\): got an unexpected keyword .*prefetchh"):
        stream(data(), prefetchh=2)
    with pytest.raises(TypeError, match=r"stream\(\): too many positional arguments"):
        stream(data(), "numpy")
    with pytest.raises(TypeError, match=r"stream\(\): missing a required argument: 'source'"):
        stream(prefetch=2)
    with stream(source=data(3), backend="numpy") as s:  # by keyword, as before
        assert values(s) == [0.0, 1.0, 2.0]
    with pytest.raises(TypeError, match=r"dtypes keys are leaf paths as strings.*got 1"):
        StreamOptions(dtypes={1: "float16"})  # type: ignore[dict-item]


def test_options_are_frozen_and_checked_without_a_source():
    options = StreamOptions(prefetch=2, backend="numpy")
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.prefetch = 3  # type: ignore[misc]
    assert options.slots_or_default == 4
    with pytest.raises(ValueError, match="backend must be one of"):
        StreamOptions(backend="fast")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="device must be"):
        StreamOptions(device=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="service must be"):
        StreamOptions(service=1)  # type: ignore[arg-type]


def test_a_stream_made_from_options_equals_one_made_by_keywords():
    options = StreamOptions(backend="numpy", prefetch=2)
    with Stream(data(), options) as a, stream(data(), backend="numpy", prefetch=2) as b:
        assert values(a) == values(b) == [float(i) for i in range(12)]
        assert a.backend == b.backend == "numpy"
    with pytest.raises(TypeError, match="options must be a StreamOptions"):
        Stream(data(), {"prefetch": 2})  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_set_state_goes_back_and_forward_in_place(backend):
    with stream(data(), backend=backend, prefetch=3) as s:
        assert isinstance(s, Checkpointable)
        first = [next(s) for _ in range(3)]
        saved = json.loads(json.dumps(s.get_state()))
        later = values(next(s) for _ in range(4))
        assert later == [3.0, 4.0, 5.0, 6.0]
        ahead = s.get_state()
        s.set_state(saved)  # back: the four batches again, then the rest
        assert values(s) == [float(i) for i in range(3, 12)]
        s.set_state(ahead)  # forward from the end: exactly what followed
        assert values(s) == [float(i) for i in range(7, 12)]
        # Batches delivered before any set_state() stay valid and unchanged.
        assert values(first) == [0.0, 1.0, 2.0]


@pytest.mark.parametrize("backend", SLOT_BACKENDS)
def test_a_bad_set_state_leaves_the_stream_as_it_was(backend):
    with stream(data(), backend=backend, prefetch=2) as s:
        next(s)
        with pytest.raises(ValueError, match="state\\['batches'\\]"):
            s.set_state({"version": 2, "batches": -1, "source": None})
        with pytest.raises(ValueError, match="this source has 12 batches"):
            s.set_state({"version": 2, "batches": 13, "source": None})
        assert values(s) == [float(i) for i in range(1, 12)]


def test_backend_is_kept_as_an_alias_of_backend_name():
    assert fastbridge.Backend is fastbridge.BackendName
    assert fastbridge.BACKENDS == ("auto", "ring", "numpy", "direct", "copy")


def test_the_module_examples_run():
    import doctest

    from fastbridge import _options

    result = doctest.testmod(_options, verbose=False)
    assert result.attempted >= 2 and result.failed == 0


class OneShot:
    """A Grain-style iterator that is its own iterable (as a DatasetIterator passed to
    stream() is), with a read that can be made slow."""

    def __init__(self, n: int = 20, slow_at: int = -1, refuse: BaseException | None = None):
        self.n, self.i, self.slow_at, self.refuse = n, 0, slow_at, refuse

    def __iter__(self):
        return self

    def __next__(self):
        if self.i >= self.n:
            raise StopIteration
        if self.i == self.slow_at:
            self.slow_at = -1
            time.sleep(2)
        self.i += 1
        return {"x": np.full((2, 3), self.i - 1, np.float32)}

    def get_state(self):
        return {"i": self.i}

    def set_state(self, state):
        if self.refuse is not None:
            error, self.refuse = self.refuse, None
            raise error
        self.i = state["i"]


def test_set_state_refuses_a_one_shot_iterator_it_cannot_rewind():
    with stream(iter(data()), backend="numpy", prefetch=2) as s:
        next(s)
        saved = s.get_state()
        with pytest.raises(ValueError, match="one-shot iterator"):
            s.set_state(saved)
        assert values(s) == [float(i) for i in range(1, 12)]  # nothing was lost


@pytest.mark.parametrize("backend", ["ring", "numpy"])
def test_set_state_waits_for_a_slow_read_instead_of_reading_twice(backend):
    source = OneShot(slow_at=6)
    with stream(source, backend=backend, prefetch=2) as s:
        got = values(next(s) for _ in range(3))
        saved = s.get_state()
        got += values(next(s) for _ in range(2))
        s.set_state(saved)  # the producer is inside the 2 s read of batch 6
        got += values(s)
    assert got == [0.0, 1.0, 2.0, 3.0, 4.0, *[float(i) for i in range(3, 20)]]


def test_an_interrupted_set_state_says_so_instead_of_ending_quietly():
    source = OneShot(refuse=KeyboardInterrupt())
    with stream(source, backend="numpy", prefetch=2) as s:
        next(s)
        saved = s.get_state()
        with pytest.raises(KeyboardInterrupt):
            s.set_state(saved)
        with pytest.raises(fastbridge.StreamClosedError, match="set_state\\(\\) did not finish"):
            next(s)
        s.set_state(saved)  # a second try works
        assert values(s) == [float(i) for i in range(1, 20)]


def test_set_state_from_another_thread_moves_the_consumer_on():
    with stream(data(), backend="ring", prefetch=2) as s:
        got = values(next(s) for _ in range(4))
        saved = s.get_state()
        mover = threading.Timer(0.2, s.set_state, (saved,))
        mover.start()
        time.sleep(0.5)
        got += values(s)  # the loop goes on from the state, it does not end
        mover.join()
    assert got[:4] == [0.0, 1.0, 2.0, 3.0] and got[-8:] == [float(i) for i in range(4, 12)]


def test_a_state_tf_data_refuses_leaves_the_stream_as_it_was():
    tf = pytest.importorskip("tensorflow")
    ds = tf.data.Dataset.range(10).batch(2)
    with stream(ds, backend="numpy", checkpoint=True) as s:
        next(s)
        bad = {**s.get_state(), "tf_iterator": "not base64 !"}
        with pytest.raises(ValueError, match="tf_iterator"):
            s.set_state(bad)
        assert [b.tolist() for b in s] == [[2, 3], [4, 5], [6, 7], [8, 9]]


def test_stats_count_every_batch_this_stream_delivered_across_set_state():
    with stream(data(), backend="numpy") as s:
        for _ in range(5):
            next(s)
        s.set_state({"version": 2, "batches": 2, "source": None})
        list(s)
        stats = s.stats
    assert stats.batches == 5 + 10 and stats.bytes == 15 * 2 * 3 * 4


def test_set_state_after_close_or_with_none_is_refused():
    s = stream(data(), backend="numpy")
    saved = s.get_state()
    with pytest.raises(TypeError, match="state must be a dict"):
        s.set_state(None)  # type: ignore[arg-type]
    s.close()
    with pytest.raises(fastbridge.StreamClosedError, match="closed stream"):
        s.set_state(saved)


def test_warnings_point_at_the_users_line_however_the_stream_is_made():
    tf = pytest.importorskip("tensorflow")
    ds = tf.data.Dataset.range(4).map(lambda x: tf.py_function(lambda v: v, [x], tf.int64))
    for make in (
        lambda: stream(ds, backend="direct"),
        lambda: Stream(ds, StreamOptions(backend="direct")),
    ):
        with pytest.warns(fastbridge.FastbridgeWarning) as caught:
            make().close()
        assert caught[0].filename == __file__, caught[0].filename


def test_service_follows_one_rule_for_stream_and_distribute():
    """``service=`` takes what ``service.distribute`` takes: an address, or an object whose
    ``.target`` is one; both refuse the rest with the same errors."""

    class Dispatcher:
        target = "grpc://localhost:5050"

    assert StreamOptions(service="localhost:5050").service == "localhost:5050"
    assert isinstance(StreamOptions(service=Dispatcher()).service, Dispatcher)
    with pytest.raises(ValueError, match=r"^service must be .*'localhost'"):
        StreamOptions(service="localhost")
    with pytest.raises(TypeError, match=r"^service must be .*\.target"):
        StreamOptions(service=5050)  # type: ignore[arg-type]


def test_one_integer_check_names_the_option():
    from fastbridge._checks import check_int

    check_int("n", 3, 1)
    check_int("n", None, 1, 8, optional=True)
    with pytest.raises(ValueError, match=r"^n must be an int >= 1, got 0$"):
        check_int("n", 0, 1)
    with pytest.raises(TypeError, match=r"^n must be an int from 1 to 8 or None, got True$"):
        check_int("n", True, 1, 8, optional=True)
    with pytest.raises(ValueError, match=r"^n must be an int >= 1, got 1\.5$"):
        check_int("n", 1.5, 1, wrong_type=ValueError)
