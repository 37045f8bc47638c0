"""The examples run as users run them: real subprocesses, real flax, optax, orbax, tf.data, Grain.

``train_digits.py`` is preempted mid-epoch (``os._exit`` after a step that is not a checkpoint
step), resumed in a fresh process from its last checkpoint, and must end with the parameters of
an uninterrupted run, bit for bit, having trained on every batch of that run exactly once
after the checkpoint it resumed from.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_digits.py"

# 12 batches of 128 per epoch (1500 digits, the last batch padded from 92 rows). The run is
# cut mid-way through epoch 2, 5 steps after its last checkpoint (16), and goes on across the
# epoch boundary (24) to stop mid-way through epoch 3.
STEPS, SAVE_EVERY, STOP_AFTER, LAST_SAVE = 30, 8, 21, 16


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The test's environment for the example, with one JAX compilation cache for all runs:
    compiling dominates these short runs. One host device: the example needs no more."""
    for module in ("optax", "orbax.checkpoint", "sklearn"):
        pytest.importorskip(module)
    try:  # flax 0.12.8 fails on import (AttributeError) under jax 0.12: it needs flax 0.12.12
        from flax import nnx  # noqa: F401
    except Exception as error:
        import jax

        pytest.skip(f"flax.nnx does not import with jax {jax.__version__}: {error!r}")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("jax-cache"))
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


def run(env: dict[str, str], *args: object, code: int = 0) -> str:
    """Run the example with ``args``; check its exit status; return its stdout."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == code, (
        f"exit status {done.returncode}, expected {code}\n{done.stdout}\n{done.stderr[-4000:]}"
    )
    return done.stdout


def read_log(path: Path) -> list[tuple[int, str]]:
    return [(int(step), digest) for step, digest in (line.split() for line in path.open())]


def saved_items(ckpt: Path, step: int) -> dict[str, object]:
    """The stream state saved in checkpoint ``step``, read back through orbax's own API."""
    import orbax.checkpoint as ocp

    with ocp.CheckpointManager(ckpt.absolute()) as manager:
        assert manager.item_metadata(step).keys() >= {"state", "data"}
        restored = manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))
    data: dict[str, object] = restored.data
    return data


@pytest.mark.slow
@pytest.mark.parametrize("source", ["tf", "grain"])
def test_preempted_training_resumes_bit_for_bit(source, env, tmp_path):
    pytest.importorskip("tensorflow" if source == "tf" else "grain")
    common = ("--source", source, "--steps", STEPS)

    # (1) Uninterrupted, no checkpoints.
    out = run(env, *common, "--out", tmp_path / "want.npz", "--log-batches", tmp_path / "want")
    assert f"done: {STEPS} steps, train_step traced 1 time(s)" in out  # padded: one compile
    want = read_log(tmp_path / "want")
    assert [step for step, _ in want] == list(range(1, STEPS + 1))
    assert len({digest for _, digest in want}) == STEPS  # every batch differs: epochs reshuffle

    # (2) Preempted after STOP_AFTER steps, then resumed by a fresh process.
    ckpt, log = tmp_path / "ckpt", tmp_path / "got"
    resumable = (*common, "--ckpt-dir", ckpt, "--save-every", SAVE_EVERY, "--log-batches", log)
    out = run(env, *resumable, "--stop-after", STOP_AFTER, code=3)
    assert f"preempted after step {STOP_AFTER}" in out
    assert sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) == [8, LAST_SAVE]
    data = saved_items(ckpt, LAST_SAVE)
    assert data["batches"] == LAST_SAVE and data["batch_size"] == 128
    # Grain: its own iterator state; tf.data: replayed, so the batch count is the position.
    assert (data["source"] is not None) == (source == "grain") and "tf_iterator" not in data

    # What a crash in the middle of the next save would leave: its items under orbax's
    # temporary name, never renamed to the step. The resume must ignore it.
    shutil.copytree(ckpt / str(LAST_SAVE), ckpt / f"{LAST_SAVE + SAVE_EVERY}.orbax-checkpoint-tmp")

    out = run(env, *resumable, "--out", tmp_path / "got.npz")
    assert f"resumed from step {LAST_SAVE}" in out
    assert f"done: {STEPS} steps, train_step traced 1 time(s)" in out

    # The second process trained on the batches after the checkpoint, from the first one the
    # first process had trained on after it: none repeated relative to it, none skipped.
    got = read_log(log)
    steps = [step for step, _ in got]
    assert steps == [*range(1, STOP_AFTER + 1), *range(LAST_SAVE + 1, STEPS + 1)]
    assert sorted(set(got)) == want  # the redone steps 17-21 saw the same batches as before

    with np.load(tmp_path / "want.npz") as a, np.load(tmp_path / "got.npz") as b:
        assert sorted(a) == sorted(b) == ["hidden/bias", "hidden/kernel", "out/bias", "out/kernel"]
        for name in a:
            assert a[name].tobytes() == b[name].tobytes(), f"{name} differs after the resume"
