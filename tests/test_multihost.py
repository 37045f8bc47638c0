"""Two real JAX processes on localhost (CPU, gloo collectives) stream global batches."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

WORKER = textwrap.dedent(
    """
    import json, os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    process, port = int(sys.argv[1]), sys.argv[2]
    jax.distributed.initialize(
        coordinator_address=f"localhost:{port}", num_processes=2, process_id=process
    )
    import numpy as np
    import tensorflow as tf
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from fastbridge import stream
    from fastbridge._testing import recorded_slots

    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharding = NamedSharding(mesh, P("data"))
    # 9 batches of 4: process 0 reads batches 0, 2, 4, 6, 8 and process 1 reads 1, 3, 5, 7.
    ds = tf.data.Dataset.range(36).map(
        lambda i: {"x": tf.cast(tf.fill([3], i), tf.float32), "i": tf.cast(i, tf.int32)}
    ).batch(4)
    results = {}
    for backend, pad in [("ring", False), ("ring", True), ("direct", False), ("numpy", True),
                         ("copy", False)]:
        out = []
        with recorded_slots() as ranges, stream(
            ds, backend=backend, sharding=sharding, pad_last=pad
        ) as batches:
            for item in batches:
                batch, mask = item if pad else (item, None)
                assert batch["x"].shape[0] == 8 and not batch["x"].is_fully_addressable
                if backend == "ring":  # each local shard aliases this process's slot
                    for shard in batch["x"].addressable_shards:
                        ptr = shard.data.unsafe_buffer_pointer()
                        assert any(a <= ptr < a + n for a, n in ranges.items()), "copied"
                row = {
                    key: multihost_utils.process_allgather(batch[key], tiled=True).tolist()
                    for key in ("x", "i")
                }
                if pad:
                    row["mask"] = multihost_utils.process_allgather(mask, tiled=True).tolist()
                out.append(row)
        results[f"{backend}-{pad}"] = out
    # Resumed past process 1's last real batch: it has no batch of its own to take the
    # padding's shape from, and must still yield as many batches as process 0 (it used to
    # end at once, and process 0 then waited forever in its next collective).
    for backend in ("ring", "copy"):
        with stream(ds, backend=backend, sharding=sharding, pad_last=True) as batches:
            for _ in range(4):
                next(batches)
            saved = json.loads(json.dumps(batches.state()))
        out = []
        with stream(ds, backend=backend, sharding=sharding, pad_last=True, state=saved) as b:
            for batch, mask in b:
                row = {
                    key: multihost_utils.process_allgather(batch[key], tiled=True).tolist()
                    for key in ("x", "i")
                }
                row["mask"] = multihost_utils.process_allgather(mask, tiled=True).tolist()
                out.append(row)
        results[f"resume-{backend}"] = out
    print("RESULT", json.dumps(results), flush=True)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _expected(pad: bool) -> list[dict]:
    local = [np.arange(4 * b, 4 * b + 4) for b in range(9)]
    out = []
    for k in range(5 if pad else 4):
        rows0 = local[2 * k]
        rows1 = local[2 * k + 1] if 2 * k + 1 < 9 else None
        ids = np.concatenate([rows0, rows1 if rows1 is not None else np.zeros(4, int)])
        row = {"x": np.repeat(ids[:, None], 3, axis=1).astype(float).tolist(), "i": ids.tolist()}
        if pad:
            row["mask"] = [True] * 4 + [rows1 is not None] * 4
        out.append(row)
    return out


@pytest.fixture(scope="module")
def results():
    return run_two_processes(WORKER)


def run_two_processes(worker: str, *args: str) -> list:
    """Run ``worker`` as JAX processes 0 and 1 (argv: process, port, ``args``) and return the
    JSON each printed on its ``RESULT`` line."""
    port = str(_free_port())
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", worker, str(p), port, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for p in range(2)
    ]
    outputs = []
    for proc in procs:
        try:
            stdout, stderr = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail("a process hung: the two processes did not yield the same batches")
        assert proc.returncode == 0, stderr[-3000:]
        line = next(x for x in stdout.splitlines() if x.startswith("RESULT "))
        outputs.append(json.loads(line[len("RESULT ") :]))
    return outputs


@pytest.mark.slow
@pytest.mark.parametrize(
    "case", ["ring-False", "ring-True", "direct-False", "numpy-True", "copy-False"]
)
def test_global_batches_equal_the_global_data(results, case):
    pad = case.endswith("True")
    want = _expected(pad)
    for process_result in results:
        got = process_result[case]
        assert len(got) == len(want), "both processes yield the same number of batches"
        assert got == want


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ring", "copy"])
def test_a_resume_past_a_process_last_batch_pads_and_keeps_processes_in_step(results, backend):
    want = _expected(True)[4:]  # the fifth batch: process 0's last rows, process 1 all padding
    for process_result in results:
        assert process_result[f"resume-{backend}"] == want


class _Counter:
    """A Grain-style source: its iterator saves and restores its position."""

    def __iter__(self):
        return _CounterIterator()


class _CounterIterator:
    def __init__(self):
        self.i = 0

    def __next__(self):
        if self.i >= 23:
            raise StopIteration
        self.i += 1
        return np.array([self.i - 1])

    def get_state(self):
        return {"i": self.i}

    def set_state(self, state):
        self.i = state["i"]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_a_process_share_of_a_stateful_source_resumes_exactly(index):
    # With several processes, a non-tf.data source is split by taking every process_count-th
    # item; the share must keep the source's get_state()/set_state(), or a resume would
    # silently fall back to replaying the source from the start.
    from fastbridge import stream
    from fastbridge._multihost import EveryNth

    share = EveryNth(_Counter(), 3, index)
    want = list(range(index, 23, 3))
    with stream(share, backend="numpy", prefetch=1) as s:
        first = [int(next(s)[0]) for _ in range(3)]
        state = s.state()
    assert first == want[:3]
    assert state["source"] is not None, "the share lost the source's get_state()"
    with stream(EveryNth(_Counter(), 3, index), backend="numpy", state=state) as s:
        rest = [int(b[0]) for b in s]
    assert first + rest == want
