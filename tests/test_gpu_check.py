"""The GPU device check (benches/gpu/check.py) in its dry mode, on CPU with tiny sizes: every
method is measured, the correctness pass finds nothing wrong in a sound run, the table comes
last, and a planted corruption is found and fails the run. No timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import fastbridge
import pytest

CHECK = Path(__file__).resolve().parents[1] / "benches" / "gpu" / "check.py"
HEADER = "=== fastbridge GPU check: summary ==="

pytestmark = pytest.mark.skipif(
    not fastbridge.core_available(), reason="the check streams through the Rust extension"
)


def run_check(out: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    # One CPU device (conftest forces eight for the sharding tests; the check needs one).
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    done = subprocess.run(
        [sys.executable, str(CHECK), "--dry", "--out", str(out), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.exists(), f"no JSON written (rc {done.returncode})\n{done.stdout}\n{done.stderr}"
    return done, json.loads(out.read_text())


def test_the_check_imports_no_tensorflow():
    # The GPU machine has no TensorFlow: every module of the check, and every bench part they
    # import, must load without it.
    modules = sorted(p.stem for p in CHECK.parent.glob("*.py"))
    code = f"import sys; import {', '.join(modules)}; print('tensorflow' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(CHECK.parent), *sys.path])}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.strip() == "False"


def bad_counts(report: dict) -> tuple[int, int, int, int]:
    return (report["corrupted"], report["lost"], report["repeated"], report["out_of_order"])


@pytest.mark.slow
def test_dry_run_measures_every_method_and_passes_correctness(tmp_path):
    # --routes device_put: one route subprocess, so that path runs too.
    done, result = run_check(
        tmp_path / "gpu-check.json", "--budget-seconds", "40", "--routes", "device_put"
    )
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    assert result["dry"] is True and result["errors"] == []
    assert result["exit_code"] == 0

    h2d = result["h2d"]
    assert h2d["rounds"] >= 3
    for name in ("ring", "ring_copy8", "numpy", "device_put_reused", "device_put_fresh"):
        entry = h2d["methods"][name]
        assert entry["available"], name
        for size in h2d["sizes"]:
            rates = entry["gbps"][str(size)]
            assert len(rates) == h2d["rounds"] and all(r > 0 for r in rates), (name, size)
    for name in ("limit_cupy", "limit_torch"):  # no CUDA in a dry run
        assert not h2d["methods"][name]["available"]
        assert "unavailable" in h2d["methods"][name]["reason"]
    assert h2d["ring_stats"]["backend"] == "ring"
    assert "transfer_route" in h2d["ring_stats"] and "pinned" in h2d["ring_stats"]

    consumer = result["consumer"]
    assert consumer["step_seconds"] > 0
    for entry in consumer["sizes"].values():
        assert set(entry["methods"]) == {"ring", "flax_prefetch", "device_put_loop"}
        for rounds in entry["methods"].values():
            assert len(rounds) == consumer["rounds"] >= 3
            assert all(r["steps_per_s"] > 0 and r["next_us_p90"] >= 0 for r in rounds)

    correctness = result["correctness"]
    assert correctness["ok"] and set(correctness["backends"]) == {"ring", "numpy"}
    for report in correctness["backends"].values():
        assert report["delivered"] == report["batches"] == 100
        assert bad_counts(report) == (0, 0, 0, 0)
        assert report["held_checked"] > 0 and report["donated"] > 0
        assert {"f32", "i32", "u8", "mask", "index"} <= set(report["leaves"])

    route = result["routes"]["results"]["device_put"]
    assert "error" not in route, route
    assert route["median"] and route["correctness"]["ok"]

    targets = {t["target"]: t for t in result["targets"]}
    assert targets["ring H2D >= 0.9 x pinned-copy limit"]["status"] == "N/A"
    assert targets["zero corrupted, lost, repeated or out-of-order batches"]["status"] == "PASS"
    assert all(t["status"] in ("PASS", "MISS", "N/A") for t in result["targets"])
    env = result["environment"]
    assert env["jax"] and env["cpu_count"] and env["device_kind"]

    # The table comes last: after every progress line, ending with the exit status.
    lines = done.stdout.rstrip().splitlines()
    start = lines.index(HEADER)
    assert not any(line.startswith("[check ") for line in lines[start:])
    assert any("wrote" in line for line in lines[:start])
    assert lines[-1] == "exit status 0"


@pytest.mark.parametrize("mode", ["source", "late"])
def test_a_planted_corruption_is_found_and_fails_the_run(tmp_path, mode):
    # source: one byte of a batch's host source changes before the ring reads it (the device
    # checksum and the final comparison both see it). late: one byte of a held batch's own
    # memory changes after delivery, as a slot reused too early would (only the comparison of
    # held batches at the end can see it).
    done, result = run_check(
        tmp_path / "gpu-check.json", "--phases", "correctness", "--plant-corruption", mode
    )
    assert done.returncode == 1, done.stdout + done.stderr[-4000:]
    ring, numpy_ring = result["correctness"]["backends"].values()
    assert bad_counts(ring) == (1, 0, 0, 0)
    assert ring["corrupted_positions"] == [ring["planted"]["position"]]
    assert ring["held_mismatch"] == 1
    assert ring["checksum_mismatch"] == (1 if mode == "source" else 0)
    assert bad_counts(numpy_ring) == (0, 0, 0, 0)  # planted in the ring's pass only
    assert result["exit_code"] == 1 and not result["correctness"]["ok"]
    assert done.stdout.rstrip().splitlines()[-1] == "exit status 1"
