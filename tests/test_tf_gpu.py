"""TensorFlow stays off the GPU: ``keep_tensorflow_off()`` and ``stream()``'s call of it.

TensorFlow's device configuration is global to a process and frozen once its devices are
initialised, so every check that touches it runs in a fresh subprocess. This machine has no
GPU: the tests show what TensorFlow really does on a CPU-only machine (the GPU list is empty
with or without the call), that the call never initialises TensorFlow itself, that the
"already initialised" path warns (made real with TensorFlow's CPU devices standing in for
GPUs), and which targets trigger the call. That TensorFlow really leaves a GPU's memory alone
can only be seen on a machine with one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import jax
import pytest
from fastbridge._tfdata import hides_tensorflow_gpus

pytest.importorskip("tensorflow")

_PRELUDE = """
import json, os, warnings
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
warnings.simplefilter("always")
"""


def _run(script: str) -> dict[str, Any]:
    """Run ``script`` in a fresh interpreter; it prints one JSON object as its last line."""
    done = subprocess.run(
        [sys.executable, "-c", _PRELUDE + textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.slow
def test_keep_tensorflow_off_before_the_pipeline_returns_true_and_the_stream_still_works():
    """Called first, it leaves TensorFlow without a visible GPU (on this CPU machine there was
    none to hide), does not initialise TensorFlow itself (a later device configuration still
    succeeds), is idempotent, and a tf.data pipeline then streams through fastbridge."""
    out = _run(
        """
        import fastbridge
        first = fastbridge.keep_tensorflow_off()
        again = fastbridge.keep_tensorflow_off()
        import tensorflow as tf
        from tensorflow.python.eager import context
        initialised = context.context()._context_handle is not None
        # Only possible while TensorFlow's devices are not initialised yet.
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()])
        with warnings.catch_warnings(record=True) as caught:
            ds = tf.data.Dataset.range(6).batch(2)
            with fastbridge.stream(ds, device="cpu") as batches:
                values = [b.tolist() for b in batches]
        print(json.dumps({
            "first": first, "again": again, "initialised": initialised,
            "gpus": [d.name for d in tf.config.get_visible_devices("GPU")],
            "cpus": [d.name for d in tf.config.get_visible_devices("CPU")],
            "values": values, "warnings": [str(w.message) for w in caught],
        }))
        """
    )
    assert out["first"] is True and out["again"] is True
    assert out["initialised"] is False, "keep_tensorflow_off() initialised TensorFlow"
    assert out["gpus"] == []
    assert out["cpus"] == ["/physical_device:CPU:0"]
    assert out["values"] == [[0, 1], [2, 3], [4, 5]]
    assert out["warnings"] == []


@pytest.mark.slow
def test_after_tensorflow_initialised_on_a_machine_without_gpus_it_returns_true_silently():
    """What really happens here: TensorFlow raises only when the visible list would change,
    and with no GPU, hiding GPUs changes nothing, so a late call succeeds without a warning."""
    out = _run(
        """
        import fastbridge, tensorflow as tf
        from tensorflow.python.eager import context
        float(tf.reduce_sum(tf.ones(3)))  # an op: TensorFlow's devices are initialised
        with warnings.catch_warnings(record=True) as caught:
            result = fastbridge.keep_tensorflow_off()
        print(json.dumps({
            "initialised": context.context()._context_handle is not None,
            "result": result,
            "gpus": [d.name for d in tf.config.list_logical_devices("GPU")],
            "warnings": [str(w.message) for w in caught],
        }))
        """
    )
    assert out == {"initialised": True, "result": True, "gpus": [], "warnings": []}


@pytest.mark.slow
def test_the_already_initialised_path_warns_and_returns_false_with_cpu_devices_standing_in():
    """The path a GPU machine takes when TensorFlow got there first, made real without a GPU:
    TensorFlow's CPU split into two logical devices (as virtual GPUs are made), an op run, then
    the same hiding asked for CPUs. TensorFlow's RuntimeError is real; the warning names every
    device it holds and the fixes, points at the caller's line, and nothing is changed."""
    out = _run(
        """
        import tensorflow as tf
        from fastbridge import FastbridgeWarning
        from fastbridge._tfdata import _hide_from_tensorflow
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2
        )
        float(tf.reduce_sum(tf.ones(3)))
        with warnings.catch_warnings(record=True) as caught:
            result = _hide_from_tensorflow(tf, "CPU")
        print(json.dumps({
            "result": result,
            "warnings": [
                [w.category is FastbridgeWarning, w.filename, str(w.message)] for w in caught
            ],
            "cpus": [d.name for d in tf.config.list_logical_devices("CPU")],
        }))
        """
    )
    assert out["result"] is False
    assert out["cpus"] == ["/device:CPU:0", "/device:CPU:1"]
    [(is_ours, filename, message)] = out["warnings"]
    assert is_ours and filename == "<string>"  # the caller's line, not fastbridge's
    assert "TensorFlow already initialised its CPU devices (/device:CPU:0, /device:CPU:1)" in (
        message
    )
    assert "fastbridge.keep_tensorflow_off()" in message
    assert "tf.config.set_visible_devices([], 'CPU')" in message
    assert 'CUDA_VISIBLE_DEVICES=""' in message


@pytest.mark.slow
def test_stream_to_a_cpu_target_leaves_tensorflow_configuration_alone():
    """On a CPU target stream() does not touch TensorFlow's device configuration: the visible
    devices are unchanged, nothing warns, and a pass-through counter on
    ``tf.config.set_visible_devices`` sees no call (while it does see a direct
    ``keep_tensorflow_off()``, so it would have seen one). Whether a GPU target makes the call
    cannot be run here; the decision it rests on is tested below."""
    out = _run(
        """
        import fastbridge, tensorflow as tf
        calls = []
        real = tf.config.set_visible_devices
        def counting(*args, **kwargs):
            calls.append(repr(args))
            return real(*args, **kwargs)
        tf.config.set_visible_devices = counting
        before = [d.name for d in tf.config.get_visible_devices()]
        ds = tf.data.Dataset.range(4).batch(2)
        with warnings.catch_warnings(record=True) as caught:
            for backend in ["auto", "ring", "direct", "copy"]:
                with fastbridge.stream(ds, device="cpu", backend=backend) as batches:
                    values = [b.tolist() for b in batches]
        after = [d.name for d in tf.config.get_visible_devices()]
        by_stream = list(calls)
        fastbridge.keep_tensorflow_off()
        print(json.dumps({
            "before": before, "after": after, "values": values, "by_stream": by_stream,
            "direct": calls[len(by_stream):], "warnings": [str(w.message) for w in caught],
        }))
        """
    )
    assert out["before"] == out["after"] == ["/physical_device:CPU:0"]
    assert out["values"] == [[0, 1], [2, 3]]
    assert out["by_stream"] == []
    assert out["direct"] == ["([], 'GPU')"]
    assert out["warnings"] == []


def test_without_tensorflow_it_returns_false_and_imports_nothing():
    """TensorFlow made unimportable (``sys.modules["tensorflow"] = None``, Python's own way):
    False, and no TensorFlow module is loaded."""
    out = _run(
        """
        import sys
        sys.modules["tensorflow"] = None
        import fastbridge
        result = fastbridge.keep_tensorflow_off()
        loaded = sorted(m for m in sys.modules if m.startswith("tensorflow") and sys.modules[m])
        print(json.dumps({"result": result, "loaded": loaded}))
        """
    )
    assert out == {"result": False, "loaded": []}


@pytest.mark.slow
def test_the_docstring_example_runs_in_a_fresh_process():
    out = _run(
        """
        import doctest
        import fastbridge
        runner = doctest.DocTestRunner()
        for test in doctest.DocTestFinder().find(fastbridge.keep_tensorflow_off):
            runner.run(test)
        print(json.dumps({"failed": runner.failures, "attempted": runner.tries}))
        """
    )
    assert out == {"failed": 0, "attempted": 4}


@pytest.mark.parametrize(
    ("platform", "hides"),
    [("gpu", True), ("cuda", True), ("rocm", True), ("GPU", True), ("cpu", False), ("tpu", False)],
)
def test_only_gpu_platforms_keep_tensorflow_off(platform, hides):
    """The decision stream() makes from its target device's ``platform``: JAX names CUDA and
    ROCm devices ``"gpu"``; the backend names count too."""
    assert hides_tensorflow_gpus(platform) is hides


def test_this_machines_cpu_device_does_not_keep_tensorflow_off():
    assert not hides_tensorflow_gpus(jax.devices("cpu")[0].platform)
