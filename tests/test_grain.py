"""Grain sources: datasets resume through Grain's own iterator state, also with multiprocess
prefetch and across processes (a job saving the stream's state next to its train state)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ALL_BACKENDS
from fastbridge import stream

grain = pytest.importorskip("grain")
JOB = Path(__file__).with_name("grain_mp_job.py")


def pipeline():
    rows = grain.MapDataset.range(40).shuffle(seed=5).map(lambda x: np.full(2, x, np.int32))
    return rows.batch(4).to_iter_dataset()


def rows(batches):
    return [np.asarray(b).tolist() for b in batches]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_an_iter_dataset_resumes_through_grain_state(backend):
    full = rows(stream(pipeline(), backend="numpy"))
    assert sorted(r[0] for b in full for r in b) == list(range(40))
    with stream(pipeline(), backend=backend, prefetch=3) as s:
        got = rows(next(s) for _ in range(3))
        state = json.loads(json.dumps(s.state()))
    # Grain's own position, taken right after the third batch however far the stream read.
    assert state["source"] == {"next_index": 3}
    with stream(pipeline(), backend=backend, state=state) as s:
        got += rows(s)
    assert got == full


def run(*args: str) -> list:
    out = subprocess.run(
        [sys.executable, str(JOB), *args], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_mp_prefetch_resumes_exactly_in_a_new_process(tmp_path):
    full = run("full")
    saved = tmp_path / "stream_state.json"
    first = run("first", "3", str(saved))
    assert "iterators_in_use_states" in json.loads(saved.read_text())["source"]
    assert first + run("resume", str(saved)) == full
