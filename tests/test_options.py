"""The options object: declared once, checked once, and stream()'s signature derived from it."""

from __future__ import annotations

import dataclasses
import inspect
import json

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
    assert params[0].name == "source" and params[0].kind is inspect.Parameter.POSITIONAL_ONLY
    fields = dataclasses.fields(StreamOptions)
    assert [p.name for p in params[1:]] == [f.name for f in fields]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[1:])
    assert [p.default for p in params[1:]] == [f.default for f in fields]


def test_every_option_is_documented_in_stream():
    doc = inspect.getdoc(stream) or ""
    missing = [f.name for f in dataclasses.fields(StreamOptions) if f"  {f.name}: " not in doc]
    assert not missing, f"stream() does not document {missing}"


def test_unknown_and_positional_options_are_type_errors():
    with pytest.raises(TypeError, match="prefetchh"):
        stream(data(), prefetchh=2)
    with pytest.raises(TypeError):
        stream(data(), "numpy")


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
