"""Streaming through a real tf.data service (a dispatcher and two workers) on localhost.

TensorFlow's service servers listen on every interface (0.0.0.0) whatever they advertise, so
the tests that start servers run only in a network namespace whose sole interface is loopback.
Outside one, ``test_service_in_private_network_namespace`` re-runs this file inside a fresh
unprivileged user + network namespace (``unshare``), where nothing but localhost can connect.
"""

from __future__ import annotations

import collections
import itertools
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow as tf
from fastbridge import stream
from fastbridge.service import PROCESSING_MODES, LocalService, _loopback_only, distribute

ISOLATED = _loopback_only()
needs_loopback_only = pytest.mark.skipif(
    not ISOLATED, reason="starts servers: runs inside test_service_in_private_network_namespace"
)
BACKENDS = ["ring", "direct", "numpy"]
ROWS, BATCH, WORKERS = 60, 8, 2


def _dataset() -> tf.data.Dataset:
    def element(i):
        return {
            "id": i,
            "x": tf.cast(i, tf.float32) * tf.range(1, 5, dtype=tf.float32) + 0.25,
            "pixels": tf.cast(tf.fill([2, 3], i % 251), tf.uint8),
        }

    return tf.data.Dataset.range(ROWS).map(element).batch(BATCH)


def _local_rows() -> dict[int, dict[str, np.ndarray]]:
    rows = {}
    for batch in _dataset().as_numpy_iterator():
        for k, i in enumerate(batch["id"]):
            rows[int(i)] = {"x": batch["x"][k], "pixels": batch["pixels"][k]}
    return rows


def _streamed_rows(ds: tf.data.Dataset, backend: str) -> list[tuple[int, dict[str, np.ndarray]]]:
    rows = []
    with stream(ds, backend=backend) as batches:
        for batch in batches:
            assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(batch))
            assert batch["id"].shape[0] <= BATCH
            host = jax.tree.map(np.asarray, batch)
            for k, i in enumerate(host["id"]):
                rows.append((int(i), {"x": host["x"][k], "pixels": host["pixels"][k]}))
    return rows


def _assert_rows_match(rows, expected, copies: int) -> None:
    counts = collections.Counter(i for i, _ in rows)
    assert counts == {i: copies for i in expected}, "each element must arrive exactly as often"
    for i, row in rows:
        np.testing.assert_array_equal(row["x"], expected[i]["x"], strict=True)
        np.testing.assert_array_equal(row["pixels"], expected[i]["pixels"], strict=True)


@pytest.fixture(scope="module")
def service():
    with LocalService(num_workers=WORKERS) as running:
        yield running
    assert not running.running


# ---- streaming through real servers (loopback-only network namespace) ------------------------


@needs_loopback_only
def test_local_service_addresses(service):
    assert re.fullmatch(r"grpc://localhost:\d+", service.target), service.target
    assert service.dispatcher_address == service.target.removeprefix("grpc://")
    assert len(service.worker_addresses) == WORKERS
    assert all(re.fullmatch(r"localhost:\d+", a) for a in service.worker_addresses)
    assert len({service.dispatcher_address, *service.worker_addresses}) == WORKERS + 1


@needs_loopback_only
@pytest.mark.parametrize("backend", BACKENDS)
def test_distributed_epoch_yields_each_element_once(service, backend):
    remote = distribute(_dataset(), service.target)
    _assert_rows_match(_streamed_rows(remote, backend), _local_rows(), copies=1)


@needs_loopback_only
@pytest.mark.parametrize("backend", BACKENDS)
def test_parallel_epochs_yields_each_element_once_per_worker(service, backend):
    remote = distribute(_dataset(), service, processing_mode="parallel_epochs")
    _assert_rows_match(_streamed_rows(remote, backend), _local_rows(), copies=WORKERS)


@needs_loopback_only
def test_stream_service_argument_is_the_shortcut(service):
    rows = []
    with stream(_dataset(), service=service.target, backend="direct") as batches:
        for batch in batches:
            host = jax.tree.map(np.asarray, batch)
            rows.extend(
                (int(i), {"x": host["x"][k], "pixels": host["pixels"][k]})
                for k, i in enumerate(host["id"])
            )
    _assert_rows_match(rows, _local_rows(), copies=1)


@needs_loopback_only
def test_sharding_policy_and_bare_address_are_accepted(service):
    remote = distribute(
        _dataset(),
        service.dispatcher_address,  # no "grpc://": the protocol defaults to gRPC
        processing_mode=tf.data.experimental.service.ShardingPolicy.OFF,  # = parallel_epochs
    )
    _assert_rows_match(_streamed_rows(remote, "direct"), _local_rows(), copies=WORKERS)


@needs_loopback_only
def test_consumers_sharing_a_job_split_one_epoch(service):
    """Two streams with one job_name read one distributed epoch between them."""
    streams = [
        stream(distribute(_dataset(), service.target, job_name="shared"), backend="direct")
        for _ in range(2)
    ]
    rows = []
    try:
        for batch in itertools.chain.from_iterable(itertools.zip_longest(*streams)):
            if batch is not None:
                rows.extend((int(i), None) for i in np.asarray(batch["id"]))
    finally:
        for s in streams:
            s.close()
    assert collections.Counter(i for i, _ in rows) == {i: 1 for i in range(ROWS)}


# ---- arguments (no servers) -------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    ["localhost", "grpc://localhost", "localhost:0", "localhost:70000", "grpc:/localhost:5050",
     "", "grpc://:5050", "grpc://local host:5050"],
)  # fmt: skip
def test_bad_service_address_raises_value_error_naming_it(bad):
    with pytest.raises(ValueError, match=r"^service must be .*" + re.escape(repr(bad))):
        distribute(_dataset(), bad)


def test_service_of_the_wrong_type_raises_type_error():
    with pytest.raises(TypeError, match="service must be"):
        distribute(_dataset(), 5050)


def test_bad_processing_mode_names_the_allowed_values():
    with pytest.raises(ValueError, match="processing_mode") as caught:
        distribute(_dataset(), "grpc://localhost:5050", processing_mode="distributed")
    assert all(repr(mode) in str(caught.value) for mode in PROCESSING_MODES)
    assert "'distributed'" in str(caught.value)


def test_bad_job_name_and_unknown_keyword():
    with pytest.raises(ValueError, match="job_name"):
        distribute(_dataset(), "grpc://localhost:5050", job_name="")
    with pytest.raises(TypeError, match="num_workers"):
        distribute(_dataset(), "grpc://localhost:5050", num_workers=2)


def test_source_must_be_a_tf_dataset():
    with pytest.raises(TypeError, match=r"tf\.data\.Dataset"):
        distribute([np.arange(3)], "grpc://localhost:5050")


def test_local_service_arguments():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="num_workers"):
            LocalService(num_workers=bad)
    with pytest.raises(ValueError, match="work_dir"):
        LocalService(fault_tolerant_mode=True)
    with pytest.raises(RuntimeError, match="not running"):
        _ = LocalService().target


@pytest.mark.skipif(ISOLATED, reason="only meaningful where interfaces besides loopback exist")
def test_local_service_refuses_to_listen_on_exposed_interfaces():
    service = LocalService(num_workers=1)
    with pytest.raises(RuntimeError, match="every interface"):
        service.start()
    assert not service.running


# ---- the outer run: re-run this file in a private network namespace ----------------------------


@pytest.mark.slow
@pytest.mark.skipif(ISOLATED, reason="already inside a loopback-only network namespace")
def test_service_in_private_network_namespace():
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    if unshare is None or ip is None:
        pytest.skip("needs unshare and ip to make a loopback-only network namespace")
    isolate = [unshare, "--user", "--map-root-user", "--net"]
    probe = subprocess.run([*isolate, ip, "link", "set", "lo", "up"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no unprivileged network namespaces here: {probe.stderr.decode().strip()}")
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    command = [
        *isolate, "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", root,
        "-c", os.path.join(root, "pyproject.toml"), os.path.abspath(__file__),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=here, capture_output=True, text=True, timeout=120)
    report = result.stdout[-4000:] + result.stderr[-2000:]
    assert result.returncode == 0, report
    summary = result.stdout.strip().splitlines()[-1]
    assert "failed" not in summary and "error" not in summary, report
    # Everything ran but this test and the exposed-interface check (skipped inside).
    assert re.search(r"\b2 skipped\b", summary), report
