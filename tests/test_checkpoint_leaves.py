"""checkpoint=True with leaves that ``.npy`` cannot hold without pickle: strings and bfloat16.

``state()`` saves the batches the producer read ahead; these tests make sure it has read ahead
before saving, so the saved state holds such leaves and the resumed stream yields them first.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import jax
import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf
from conftest import wait_until
from fastbridge import stream

BACKENDS = ["ring", "numpy", "direct", "copy"]

# Binary data, as tf.string often holds (encoded images, protos): empty strings, NUL bytes
# inside and at the end, which fixed-width NumPy bytes would drop.
STRINGS = [b"", b"a\x00", b"\x00\xffz", b"plain", b"b\x00\x00"] * 4


def strings_dataset(batch: int | None) -> tf.data.Dataset:
    """Elements with a scalar and a vector string leaf (1-d and 2-d once batched)."""
    strings = np.array(STRINGS, dtype=object)
    ds = tf.data.Dataset.from_tensor_slices(
        {
            "x": np.arange(20, dtype=np.float32),
            "s": strings,
            "pair": np.stack([strings, strings[::-1]], axis=1),
        }
    )
    return ds.batch(batch) if batch else ds


def bfloat16_dataset() -> tf.data.Dataset:
    # Not round numbers: reading their bits as anything but bfloat16 gives other values.
    values = np.linspace(-3, 3, 20 * 3).astype(ml_dtypes.bfloat16).reshape(20, 3)
    return tf.data.Dataset.from_tensor_slices({"x": tf.constant(values)}).batch(4)


def resume_after(make: Callable[[], tf.data.Dataset], backend: str, cut: int) -> dict[str, Any]:
    """The JSON-round-tripped state after ``cut`` batches, saved once the producer has read
    ahead (so that ``state['pending']`` holds batches)."""
    with stream(make(), backend=backend, prefetch=3, checkpoint=True) as s:
        for _ in range(cut):
            next(s)
        assert wait_until(lambda: len(s.state()["pending"]) >= 2), "the producer read nothing"
        return json.loads(json.dumps(s.state()))


def assert_same_batches(got: list[Any], want: list[Any]) -> None:
    """Same values, bit for bit, and the same kind of leaf (jax.Array, object array, bytes)."""
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        for key in w:
            assert type(g[key]) is type(w[key]), key
            if isinstance(w[key], bytes):
                assert g[key] == w[key]
                continue
            assert g[key].dtype == w[key].dtype and g[key].shape == w[key].shape, key
            g_np, w_np = np.asarray(g[key]), np.asarray(w[key])
            if w_np.dtype == object:
                assert g_np.tolist() == w_np.tolist(), key
            else:
                assert g_np.tobytes() == w_np.tobytes(), key


@pytest.mark.parametrize("batch", [4, None], ids=["batched", "scalar"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_checkpoint_resumes_string_leaves(backend, batch):
    """Read-ahead string leaves survive state() (no pickle) and come back as an uninterrupted
    stream gives them: object arrays of bytes, and for scalar leaves what the backend makes of
    the iterator's bytes."""
    with stream(strings_dataset(batch), backend=backend) as s:
        full = list(s)
    state = resume_after(lambda: strings_dataset(batch), backend, cut=2)
    assert state["batches"] == 2
    with stream(strings_dataset(batch), backend=backend, state=state, checkpoint=True) as s:
        rest = list(s)
    assert_same_batches(rest, full[2:])
    if batch:
        assert isinstance(rest[0]["pair"], np.ndarray) and rest[0]["pair"].dtype == object
        assert rest[0]["pair"].shape == (4, 2)
        assert isinstance(rest[0]["x"], jax.Array)


@pytest.mark.parametrize("backend", BACKENDS)
def test_checkpoint_resumes_bfloat16_leaves(backend):
    """Read-ahead bfloat16 leaves come back as bfloat16 (not as raw ``V2`` bytes)."""
    with stream(bfloat16_dataset(), backend=backend) as s:
        full = list(s)
    state = resume_after(bfloat16_dataset, backend, cut=1)
    with stream(bfloat16_dataset(), backend=backend, state=state, checkpoint=True) as s:
        rest = list(s)
    assert_same_batches(rest, full[1:])
    assert all(b["x"].dtype == jax.numpy.bfloat16 for b in rest)


@pytest.mark.parametrize("backend", BACKENDS)
def test_checkpoint_rejects_a_tampered_string_leaf(backend):
    """A state is data, possibly from an untrusted file: a string leaf whose lengths do not
    match its bytes is refused, never unpickled or read past its end."""
    state = resume_after(lambda: strings_dataset(4), backend, cut=1)
    leaf = state["pending"][0][0]  # tf.nest order (sorted keys): "pair" first
    assert leaf["dtype"] == "string"
    leaf["data"] = leaf["data"][:-4]
    with pytest.raises(ValueError, match="malformed string leaf"):
        stream(strings_dataset(4), backend=backend, state=state, checkpoint=True)
