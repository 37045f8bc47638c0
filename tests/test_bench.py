"""The benchmark's own code on tiny sizes: every route delivers the same values, the JSON has the
schema the plots read, plots are written, and GPU mode bows out cleanly. No timing is asserted."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow as tf
from fastbridge.bench import cli, plots, report, routes, scenarios

CANONICAL = {np.dtype(np.float64): np.float32, np.dtype(np.int64): np.int32}


def _expected(batch):
    """What JAX makes of a NumPy batch with x64 off: 64-bit leaves narrowed."""
    return jax.tree_util.tree_map(
        lambda x: np.asarray(x).astype(CANONICAL.get(np.asarray(x).dtype, np.asarray(x).dtype)),
        batch,
    )


def _assert_same(got, want):
    got_leaves, got_def = jax.tree_util.tree_flatten(got)
    want_leaves, want_def = jax.tree_util.tree_flatten(want)
    assert got_def == want_def
    for g, w in zip(got_leaves, want_leaves, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        assert g.tobytes() == w.tobytes()  # bit-identical, NaNs included


@pytest.mark.parametrize("layout", scenarios.LAYOUTS)
def test_every_route_delivers_identical_values(layout):
    # Distinct batches (not one repeated), so a reused slot or a stale buffer would show.
    batches = [scenarios.make_batch(layout, 4096, seed=i) for i in range(5)]
    stacked = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *batches)
    ds = tf.data.Dataset.from_tensor_slices(stacked)
    want = [_expected(b) for b in batches]
    for route in routes.ROUTES:
        if routes.missing(route):  # grain or keras absent: the benchmark skips the route too
            continue
        got = routes.collect(route, ds, prefetch=2)
        assert len(got) == len(want), route.key
        for g, w in zip(got, want, strict=True):
            # The floor hands over NumPy untouched; compare it after the same narrowing.
            _assert_same(_expected(g) if route.kind == "floor" else g, w)


@pytest.mark.parametrize("layout", scenarios.LAYOUTS)
def test_sharded_routes_deliver_identical_values_with_the_sharding(layout):
    # conftest forces 8 host devices, the sharded scenario's layout: the batch axis over all 8.
    sharding = scenarios.batch_sharding(8)
    batches = [scenarios.make_batch(layout, 4096, seed=10 + i) for i in range(3)]
    stacked = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *batches)
    ds = tf.data.Dataset.from_tensor_slices(stacked)
    want = [_expected(b) for b in batches]
    ran = []
    for route in routes.ROUTES:
        if not route.sharded or route.kind == "floor" or routes.missing(route):
            continue
        iterator = routes.open_route(route, ds, sharding, prefetch=2)
        try:
            got = list(iterator)
        finally:
            getattr(iterator, "close", lambda: None)()
        assert len(got) == len(want), route.key
        for batch, w in zip(got, want, strict=True):
            for leaf in jax.tree_util.tree_leaves(batch):
                assert isinstance(leaf, jax.Array), route.key
                # Keras spells the spec P('batch', None): the same layout, hence equivalence.
                assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim), (route.key, leaf)
                assert len(leaf.addressable_shards) == 8, route.key
            _assert_same(routes.host_copy(batch), w)
        ran.append(route.key)
    assert {"device_put", "ring", "numpy", "direct", "auto", "big_vision"} <= set(ran)
    assert "process_local" in ran


def test_routes_without_a_sharding_argument_refuse_one():
    sharding = scenarios.batch_sharding(8)
    ds = tf.data.Dataset.from_tensors(np.zeros((16, 4), np.float32))
    with pytest.raises(ValueError, match="dlpack"):
        routes.open_route(routes.BY_KEY["dlpack"], ds, sharding)


def test_a_missing_peer_is_skipped_with_a_note(tmp_path, monkeypatch, capsys):
    real = routes.importlib.util.find_spec

    def without_grain(name, *args, **kwargs):
        return None if name == "grain" else real(name, *args, **kwargs)

    monkeypatch.setattr(routes.importlib.util, "find_spec", without_grain)
    assert routes.missing(routes.BY_KEY["grain"]) == (
        "route 10 grain skipped: grain is not installed"
    )
    assert routes.missing(routes.BY_KEY["auto"]) is None
    argv = [
        "--out", str(tmp_path), "--scenarios", "handoff", "--routes", "grain,dlpack,auto",
        "--sizes", "64K", "--layouts", "f32", "--repeats", "1", "--batches", "2",
        "--warmup", "2", "--step-ms", "1", "--no-progress", "--no-plots",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    assert "route 10 grain skipped: grain is not installed" in capsys.readouterr().err
    result = json.loads((tmp_path / "results.json").read_text())
    assert {s["route"] for s in result["samples"]} == {"dlpack", "auto"}
    assert result["meta"]["skipped_routes"] == ["route 10 grain skipped: grain is not installed"]
    # Only grain was asked for and it is missing: a clear exit, not a crash.
    with pytest.raises(SystemExit, match="none of the chosen routes"):
        cli.main([*argv[:5], "grain", *argv[6:]])


def test_the_sharded_scenario_runs_in_its_own_process(tmp_path):
    # Without forced devices in the environment, the bench starts a subprocess with 8.
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")
    argv = [
        "--out", str(tmp_path), "--scenarios", "sharded", "--routes", "device_put,auto,floor",
        "--sharded-sizes", "64K", "--sharded-layouts", "f32", "--repeats", "2",
        "--batches", "2", "--warmup", "2", "--step-ms", "1", "--no-progress", "--no-plots",
    ]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "fastbridge.bench", *argv],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "subprocess with 8 forced CPU devices" in done.stderr
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["meta"]["sharded"]["devices"] == 8
    assert "'batch'" in result["meta"]["sharded"]["sharding"]
    seen = {(s["route"], s["rep"]) for s in result["samples"]}
    assert seen == {(r, k) for r in ("device_put", "auto", "floor") for k in (0, 1)}
    assert all(s["scenario"] == "sharded" and s["wall_s"] > 0 for s in result["samples"])
    (consumer,) = [t for t in result["targets"] if t["target"] == "auto consumer time vs best peer"]
    assert consumer["where"] == "sharded f32 64 KiB, vs route 2" and consumer["low"] is not None


def test_make_batch_layouts():
    single = scenarios.make_batch("f32", 1 << 16)
    assert single.dtype == np.float32 and single.nbytes == 1 << 16
    leaves = scenarios.make_batch("dict", 1 << 20)
    assert {k: v.dtype for k, v in leaves.items()} == {
        k: np.dtype(d) for k, (d, _) in scenarios.DICT_SHARES.items()
    }
    assert scenarios.batch_nbytes(leaves) == 1 << 20
    with pytest.raises(ValueError, match="layout"):
        scenarios.make_batch("list", 10)


def test_route_and_size_parsing():
    assert [r.number for r in routes.resolve("auto,1,dlpack")] == [1, 3, 8]
    assert len(routes.resolve("all")) == len(routes.ROUTES) == 13
    assert [r.key for r in routes.resolve("10,keras,big_vision,13")] == [
        "grain", "keras", "big_vision", "process_local",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="unknown route"):
        routes.resolve("fast")
    assert report.parse_size("64K") == 65536
    assert report.parse_size("16MiB") == 16 << 20
    assert report.parse_size("1048576") == 1 << 20
    with pytest.raises(ValueError, match="size"):
        report.parse_size("lots")
    assert report.size_label(64 << 20) == "64 MiB"


def _row(scenario, layout, size, route, **medians):
    metrics = {k: {"median": v, "min": v, "max": v} for k, v in medians.items()}
    return {"scenario": scenario, "layout": layout, "size_bytes": size, "route": route,
            "route_number": 0, "label": route, "repeats": 1, "metrics": metrics}  # fmt: skip


def test_targets_are_ratios_with_verdicts():
    mib = 1 << 20
    summary = [
        _row("handoff", "f32", 16 * mib, "dlpack", consumer_s=4e-4, wall_s=6e-3),
        _row("handoff", "f32", 16 * mib, "auto", consumer_s=2e-5, wall_s=6.6e-3),
        _row("handoff", "f32", 16 * mib, "tutorial", consumer_s=2e-3, wall_s=8e-3),
        _row("copy", "", 64 * mib, "memcpy", gbps=10.0, cpu_s=0.01),
        _row("copy", "", 64 * mib, "ring_fill", gbps=6.0, cpu_s=0.011),
    ]
    found = {(t["target"], t["where"]): t for t in report.check_targets(summary)}
    consumer = found[("auto consumer time vs route 3", "f32 16 MiB")]
    assert consumer["ratio"] == pytest.approx(0.05) and consumer["met"] is True
    assert found[("auto wall time vs route 3", "f32 16 MiB")]["met"] is False
    assert found[("tutorial copy / auto consumer time", "f32 16 MiB")]["met"] is True
    assert found[("ring slot fill vs memcpy bandwidth", "64 MiB")]["met"] is False
    assert found[("ring slot fill CPU vs memcpy CPU", "64 MiB")]["met"] is True
    # A route that was not run leaves its target unmeasured, never silently met.
    ring = found[("ring consumer time vs route 3", "f32 16 MiB")]
    assert ring["ratio"] is None and ring["met"] is None
    text = report.render_targets_text(report.check_targets(summary))
    assert "MISSED" in text and "met" in text and "not measured" in text


def test_auto_is_judged_against_the_best_peer_of_each_measure():
    summary = [
        _row("sharded", "f32", 1 << 20, "auto", consumer_s=1e-5, wall_s=5.0e-3),
        _row("sharded", "f32", 1 << 20, "big_vision", consumer_s=1e-4, wall_s=5.5e-3),
        _row("sharded", "f32", 1 << 20, "grain", consumer_s=2e-5, wall_s=4.9e-3),
        _row("sharded", "f32", 1 << 20, "device_put", consumer_s=9e-4, wall_s=6.0e-3),
        _row("sharded", "f32", 1 << 20, "floor", consumer_s=1e-6, wall_s=1e-3),  # not a peer
    ]
    found = {t["target"]: t for t in report.check_targets(summary)}
    consumer = found["auto consumer time vs best peer"]
    assert consumer["where"] == "sharded f32 1 MiB, vs route 10"
    assert consumer["ratio"] == pytest.approx(0.5) and consumer["met"] is False
    wall = found["auto wall time vs best peer"]
    assert wall["where"] == "sharded f32 1 MiB, vs route 10"
    assert wall["ratio"] == pytest.approx(5.0 / 4.9) and wall["met"] is False


def test_verdicts_whose_rounds_straddle_the_goal_are_marked_noisy():
    def target(ratio, low, high, op="<="):
        met = ratio <= 1.0 if op == "<=" else ratio >= 1.0
        return {"target": "t", "where": "w", "ratio": ratio, "low": low, "high": high,
                "op": op, "threshold": 1.0, "met": met}  # fmt: skip

    steady, flipping = target(1.2, 1.1, 1.3), target(1.2, 0.9, 1.4)
    assert not report.noisy(steady) and report.noisy(flipping)
    assert report.noisy(target(0.95, 0.8, 1.1)) and not report.noisy(target(2.0, 1.5, 3.0, ">="))
    assert report.noisy(target(1.5, 0.5, 3.0, ">="))
    ((_, _, _, verdict),) = report.target_lines([flipping])
    assert verdict == "MISSED (noisy)"
    note = report.noise_note([steady, flipping])
    assert note.startswith("2 of 2 targets missed; 1 verdicts are noisy") and "--repeats" in note
    assert "no verdict is noisy" in report.noise_note([steady])


def test_targets_pair_rounds_so_drift_cancels():
    # The machine slows down 2x between rounds; within each round route 3 is 0.98x auto's wall
    # time. Each round's ratio is the same, so the drift cannot show in the paired ratio.
    samples = []
    for rep, speed in enumerate([1.0, 2.0, 1.0, 2.0, 2.0]):
        for route, wall in (("dlpack", 5e-3), ("auto", 5e-3 / 0.98)):
            samples.append(
                {
                    "scenario": "handoff",
                    "layout": "f32",
                    "size_bytes": 1 << 20,
                    "route": route,
                    "rep": rep,
                    "wall_s": wall * speed,
                    "consumer_s": wall * speed / 100,
                }
            )
    samples[-1]["wall_s"] = 5e-3 * 2.0 / 0.90  # one noisy round shows in the range
    summary = report.summarize(samples)
    targets = report.check_targets(summary, samples)
    wall = next(t for t in targets if t["target"] == "auto wall time vs route 3")
    assert wall["ratio"] == pytest.approx(1 / 0.98)
    assert wall["low"] == pytest.approx(1 / 0.98) and wall["high"] == pytest.approx(1 / 0.90)
    assert wall["met"] is True
    line = report.target_lines([wall])[0]
    assert line[2] == "1.020 [1.020-1.111]"
    # Without samples: the ratio of the medians, and no range.
    unpaired = report.check_targets(summary)
    wall = next(t for t in unpaired if t["target"] == "auto wall time vs route 3")
    assert wall["low"] is None and wall["high"] is None


def test_layouts_run_in_separate_rounds_are_not_paired():
    # dict and f32 run in their own blocks of rounds, minutes apart: their ratio is the ratio
    # of the medians, without a range that would suggest a pairing that never happened.
    samples = [
        {"scenario": "handoff", "layout": layout, "size_bytes": 1 << 20, "route": "auto",
         "rep": rep, "consumer_s": value}
        for layout, values in (("f32", [1.0, 2.0, 3.0]), ("dict", [6.0, 2.0, 1.0]))
        for rep, value in enumerate(values)
    ]  # fmt: skip
    targets = report.check_targets(report.summarize(samples), samples)
    (dict_vs_leaf,) = [t for t in targets if t["target"].startswith("6-leaf dict vs 1 leaf, auto")]
    assert dict_vs_leaf["ratio"] == pytest.approx(1.0)  # median 2.0 / median 2.0
    assert dict_vs_leaf["low"] is None and dict_vs_leaf["high"] is None


def test_e2e_target_pairs_auto_with_the_best_anchor():
    samples = [
        {
            "scenario": "e2e",
            "layout": "",
            "size_bytes": 1,
            "route": route,
            "rep": rep,
            "steps_per_s": rate,
        }
        for rep in range(3)
        for route, rate in (("dlpack", 70.0 + rep), ("device_put", 60.0), ("auto", 71.0 + rep))
    ]
    targets = report.check_targets(report.summarize(samples), samples)
    (e2e,) = [t for t in targets if t["target"].startswith("end-to-end")]
    assert e2e["where"] == "e2e, vs route 3"
    assert e2e["ratio"] == pytest.approx(72.0 / 71.0) and e2e["met"] is True


def _check_schema(result):
    meta = result["meta"]
    for key in ("started", "argv", "args", "machine", "routes", "seconds", "step_seconds"):
        assert key in meta, key
    machine = meta["machine"]
    assert isinstance(machine["cpu"], str) and isinstance(machine["cores"], int)
    assert set(machine["versions"]) >= {"fastbridge", "jax", "jaxlib", "tensorflow", "numpy"}
    # Schema only: a measured duration is recorded (no bound on how long it took).
    assert isinstance(meta["step_seconds"], float) and math.isfinite(meta["step_seconds"])
    scenarios_seen = {s["scenario"] for s in result["samples"]}
    assert scenarios_seen == {"handoff", "throughput", "copy", "e2e", "memory", "sharded"}
    assert result["meta"]["sharded"]["devices"] == 8
    for s in result["samples"]:
        for key, kind in (("scenario", str), ("route", str), ("route_number", int),
                          ("layout", str), ("size_bytes", int), ("rep", int)):  # fmt: skip
            assert isinstance(s[key], kind), (key, s)
        assert isinstance(s["cpu_s"], float)
        if s["scenario"] == "copy":  # memcpy, copy_into and ring slot fill
            assert s["route"] in ("memcpy", "copy_into", "ring_fill")
            # Schema only: both figures were recorded as finite measurements.
            assert all(math.isfinite(s[k]) for k in ("seconds", "gbps")), s
            continue
        assert isinstance(s["wall_s"], float) and s["wall_s"] > 0
        if s["scenario"] in ("handoff", "throughput", "sharded"):
            assert isinstance(s["consumer_s"], float) and s["consumer_s"] >= 0
            assert isinstance(s["gbps"], float) and s["gbps"] > 0
            assert len(s["next_s"]) == s["batches"]
            for key in ("consumer_copied_bytes", "producer_copied_bytes", "rss_peak"):
                assert isinstance(s[key], int), key
        if s["scenario"] == "e2e":
            assert s["steps_per_s"] > 0 and 0 <= s["wait_fraction"] <= 1.5
        if s["scenario"] == "memory":
            assert {"rss_peak", "rss_growth", "minor_faults"} <= set(s)
    for row in result["summary"]:
        assert set(row) >= {"scenario", "layout", "size_bytes", "route", "route_number", "metrics"}
        for stats in row["metrics"].values():
            assert set(stats) == {"median", "min", "max"}
            assert stats["min"] <= stats["median"] <= stats["max"]
    for t in result["targets"]:
        assert set(t) == {"target", "where", "ratio", "low", "high", "op", "threshold", "met"}
        assert t["met"] in (True, False, None)
        if t["low"] is not None:  # rounds were paired: the median lies within their range
            assert t["low"] <= t["ratio"] <= t["high"]
    # The tutorial copy always copies on the consumer; fastbridge never does.
    by = {(s["scenario"], s["route"]): s for s in result["samples"]}
    assert by[("handoff", "tutorial")]["consumer_copied_bytes"] > 0
    assert by[("handoff", "auto")]["consumer_copied_bytes"] == 0
    assert by[("handoff", "ring")]["producer_copied_bytes"] > 0
    # Keras's adapter copies every tensor with np.array; big_vision views TensorFlow's buffer.
    if not routes.missing(routes.BY_KEY["keras"]):
        assert by[("handoff", "keras")]["consumer_copied_bytes"] > 0
    assert by[("handoff", "big_vision")]["consumer_copied_bytes"] == 0
    sharded = {s["route"] for s in result["samples"] if s["scenario"] == "sharded"}
    assert sharded == {r.key for r in routes.ROUTES if r.sharded and not routes.missing(r)}
    peer_targets = {t["where"] for t in result["targets"] if "best peer" in t["target"]}
    assert any(w.startswith("handoff f32 64 KiB, vs route ") for w in peer_targets)
    assert any(w.startswith("sharded f32 64 KiB, vs route ") for w in peer_targets)


def test_tiny_run_writes_json_summary_and_plots(tmp_path, capsys):
    out = tmp_path / "results"
    argv = [
        "--out", str(out), "--sizes", "64K", "--layouts", "f32,dict", "--repeats", "1",
        "--batches", "2", "--warmup", "2", "--step-ms", "1", "--throughput-sizes", "64K",
        "--throughput-layouts", "f32", "--copy-sizes", "64K", "--e2e-steps", "2",
        "--e2e-repeats", "1", "--e2e-batch", "8", "--e2e-hidden", "16",
        "--memory-size", "64K", "--memory-batches", "3", "--sharded-sizes", "64K",
        "--sharded-layouts", "f32", "--no-progress",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "consumer-visible" in printed and "Targets" in printed
    result = json.loads((out / "results.json").read_text())
    _check_schema(result)
    # The plots read only the summary: redraw them from the JSON as written.
    redrawn = plots.draw(result, str(tmp_path))
    names = {os.path.basename(p) for p in redrawn}
    always = {"handoff_consumer.png", "handoff_wall.png", "throughput.png", "e2e.png"}
    always |= {"sharded_consumer.png", "sharded_wall.png"}
    assert always <= names <= always | {"memory.png"}
    # memory.png shows only measures in which the routes differ: none differ, no plot.
    for row in result["summary"]:
        if row["scenario"] == "memory":
            for metric in row["metrics"].values():
                metric.update(median=1.0, min=1.0, max=1.0)
    (tmp_path / "flat").mkdir()
    flat = {os.path.basename(p) for p in plots.draw(result, str(tmp_path / "flat"))}
    assert flat == always
    for name in always:
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG"), name
    md = (out / "summary.md").read_text()
    assert "### Targets" in md and "tensorflow" in md and "Machine" in md
    assert "| route |" in md and "handoff_consumer.png" in md
    assert "vs route 3" in md and "| path |" not in md and "vs path" not in md


def test_plots_say_so_without_matplotlib(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(plots.PlotsUnavailable, match="matplotlib is not installed"):
        plots.draw({"meta": {}, "summary": []}, ".")


def test_help_explains_every_option():
    text = cli.build_parser().format_help()
    for action in cli.build_parser()._actions:
        if action.help == argparse.SUPPRESS:  # a deprecated alias, hidden on purpose
            continue
        for flag in action.option_strings:
            assert flag in text
        assert action.help, action.option_strings
    assert "Routes: 1 tutorial copy" in text and "--routes" in text
    # Options the profile fills in say so in brackets; "(default: None)" would contradict it.
    assert "default: None" not in text and "(default: 4)" in text
    assert "issue" not in text.lower()


def test_paths_is_a_hidden_alias_of_routes(capsys):
    parser = cli.build_parser()
    assert parser.parse_args([]).routes == "all"
    assert parser.parse_args(["--routes", "1,dlpack"]).routes == "1,dlpack"
    assert capsys.readouterr().err == ""
    # The option's earlier name still works, says it is deprecated, and is not in --help.
    assert parser.parse_args(["--paths", "ring,auto"]).routes == "ring,auto"
    assert "--paths is deprecated, use --routes" in capsys.readouterr().err
    assert "--paths" not in parser.format_help()


def test_gpu_mode_exits_zero_without_a_gpu(tmp_path):
    if scenarios.gpu_devices():
        pytest.skip("this machine has a GPU")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "JAX_PLATFORMS": ""}
    done = subprocess.run(
        [sys.executable, "-m", "fastbridge.bench", "--device", "gpu", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "JAX sees no GPU" in done.stdout
