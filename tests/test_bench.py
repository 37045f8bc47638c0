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
from fastbridge.bench import cli, headline, leaves, plots, report, routes, scenarios, shapes

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


@pytest.mark.slow
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
    targets = {t["target"]: t for t in result["targets"]}
    consumer = targets["auto consumer time vs best synchronous route"]
    assert consumer["where"] == "sharded f32 64 KiB, vs route 2" and consumer["low"] is not None
    # No prefetching peer ran, so that target is absent rather than judged against nothing.
    assert "auto consumer time vs best prefetching peer" not in targets


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
    assert len(routes.resolve("all")) == len(routes.ROUTES) == 14
    assert routes.resolve("14")[0].key == "thread"
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
    assert "auto consumer time vs best peer" not in found  # replaced by the two below
    # Time inside next(): as low as the best prefetching peer's (grain, not big_vision) ...
    consumer = found["auto consumer time vs best prefetching peer"]
    assert consumer["where"] == "sharded f32 1 MiB, vs route 10"
    assert consumer["ratio"] == pytest.approx(0.5) and consumer["met"] is True
    # ... and 4 x below the best route that transfers inside next() (device_put here).
    sync = found["auto consumer time vs best synchronous route"]
    assert sync["where"] == "sharded f32 1 MiB, vs route 2" and sync["threshold"] == 0.25
    assert sync["ratio"] == pytest.approx(1e-5 / 9e-4) and sync["met"] is True
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
    assert scenarios_seen == {
        "handoff", "throughput", "copy", "e2e", "memory", "sharded", "leaves", "shapes", "forced"
    }  # fmt: skip
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
        assert set(t) == {"target", "where", "ratio", "low", "high", "op", "threshold", "met",
                          "scenario", "case", "versus", "headline"}  # fmt: skip
        assert t["met"] in (True, False, None)
        assert t["met"] is None if t["op"] == "info" else t["op"] in ("<=", ">=")
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


@pytest.mark.serial
@pytest.mark.slow
def test_tiny_run_writes_json_summary_and_plots(tmp_path, capsys):
    out = tmp_path / "results"
    argv = [
        "--out", str(out), "--sizes", "64K", "--layouts", "f32,dict", "--repeats", "1",
        "--batches", "2", "--warmup", "2", "--step-ms", "1", "--throughput-sizes", "64K",
        "--throughput-layouts", "f32", "--copy-sizes", "64K", "--e2e-steps", "2",
        "--e2e-repeats", "1", "--e2e-batch", "8", "--e2e-hidden", "16",
        "--memory-size", "64K", "--memory-batches", "3", "--sharded-sizes", "64K",
        "--sharded-layouts", "f32", "--leaves-counts", "1,8", "--leaves-sizes", "4K",
        "--leaves-batches", "2", "--shapes-batches", "3", "--shapes-counts", "8", "--no-progress",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "consumer-visible" in printed and "All targets" in printed
    # The headline leads: before the target list and every per-route table.
    assert printed.lstrip().startswith("HEADLINE")
    assert printed.index("HEADLINE") < printed.index("All targets") < printed.index("Handoff")
    result = json.loads((out / "results.json").read_text())
    _check_schema(result)
    # The plots read only the summary: redraw them from the JSON as written.
    redrawn = plots.draw(result, str(tmp_path))
    names = {os.path.basename(p) for p in redrawn}
    always = {"handoff_consumer.png", "handoff_wall.png", "throughput.png", "e2e.png"}
    always |= {"sharded_consumer.png", "sharded_wall.png", "headline.png", "leaves.png"}
    assert os.path.basename(redrawn[0]) == "headline.png"  # the main plot comes first
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
    assert "### All targets" in md and "tensorflow" in md and "Machine" in md
    assert md.index("### Headline") < md.index("### Setup") < md.index("### All targets")
    assert "![headline.png](headline.png)" in md
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


# -- leaves and shapes -------------------------------------------------------------------------
LEAF_ROUTES = ("device_put", "auto", "grain", "big_vision", "thread")


def test_leaves_routes_read_a_list_of_numpy_dicts():
    # The NumPy source: a plain list of dicts. Every leaves route delivers its values unchanged.
    batches = [leaves.leaf_batch(3, 4096, seed=i) for i in range(4)]
    for key in LEAF_ROUTES:
        route = routes.BY_KEY[key]
        if routes.missing(route):
            continue
        got = routes.collect(route, batches)
        assert len(got) == len(batches), key
        for g, w in zip(got, batches, strict=True):
            _assert_same(g, w)
    assert [b["leaf00"].shape for b in batches] == [(16, 64)] * 4


@pytest.mark.slow
def test_leaves_and_shapes_run_at_tiny_sizes(tmp_path, capsys):
    argv = [
        "--out", str(tmp_path), "--scenarios", "leaves,shapes", "--repeats", "2",
        "--warmup", "2", "--leaves-counts", "1,8", "--leaves-sizes", "4K,16K",
        "--leaves-batches", "2", "--shapes-batches", "5", "--shapes-counts", "8,64",
        "--no-progress", "--no-plots",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.lstrip().startswith("HEADLINE") and "leaves (no step)" in printed
    assert "FASTBRIDGE_TRANSFER" not in os.environ  # set only while the forced streams are made
    result = json.loads((tmp_path / "results.json").read_text())
    ran = [k for k in LEAF_ROUTES if not routes.missing(routes.BY_KEY[k])]
    seen = {(s["scenario"], s["layout"], s["size_bytes"], s["route"], s["rep"])
            for s in result["samples"]}  # fmt: skip
    for kind in ("numpy", "tf.data"):
        for count in (1, 8):
            for size in (4096, 16384):
                for route in [*ran, "memcpy"]:
                    for rep in (0, 1):
                        assert ("leaves", f"{kind} x{count}", size, route, rep) in seen
    by = {(s["scenario"], s["layout"], s["size_bytes"], s["route"], s["rep"]): s
          for s in result["samples"]}  # fmt: skip
    # auto resolves to ring for a list of NumPy dicts, to direct for tf.data; only ring copies.
    # The producer's copies are counted over the timed batches, and it may run a few batches
    # further ahead at the start than at the end (fewer than the 8 batches a run times), so a
    # run that copies shows some bytes per batch, not always a whole batch's.
    ring = by[("leaves", "numpy x8", 4096, "auto", 0)]
    direct = by[("leaves", "tf.data x8", 4096, "auto", 0)]
    assert ring["backend"] == "ring" and ring["producer_copied_bytes"] > 0
    assert direct["backend"] == "direct" and direct["producer_copied_bytes"] == 0
    for s in result["samples"]:
        if s["scenario"] == "leaves" and s["route"] != "memcpy":
            assert s["batches_per_s"] > 0 and s["cpu_s"] >= 0 and s["consumer_s"] >= 0
    # shapes: both runs in every round, and the forced route against sync at 8 and 64 leaves.
    assert result["meta"]["shapes"]["transfer_route"] == "device_put"
    for rep in (0, 1):
        runs = ("distinct", "same", "new300", "new1000")
        assert {("shapes", "8", 16384, r, rep) for r in runs} <= seen
        for count in (8, 64):
            for route in ("forced", "device_put"):
                assert ("forced", f"numpy x{count}", 16384, route, rep) in seen
    distinct = by[("shapes", "8", 16384, "distinct", 0)]
    assert distinct["backend"] == "ring" and len(distinct["next_s"]) == 5
    names = {t["target"] for t in result["targets"]}
    assert {
        "auto batches/s vs best prefetching peer", "auto batches/s vs sync",
        "auto CPU per batch vs best peer's", "distinct-shape vs one-shape time per batch",
        "RSS growth MiB over the distinct-shape run", "forced-route batches/s vs sync",
        "RSS growth MiB over 1000 new shapes minus over 300 (bounded sizes)",
    } <= names  # fmt: skip
    md = (tmp_path / "summary.md").read_text()
    assert md.index("### Headline") < md.index("### All targets") < md.index("Leaves (list of")


def test_shaped_batches_differ_only_where_asked():
    distinct = shapes.shaped_batches(4, distinct=True)
    same = shapes.shaped_batches(4, distinct=False)
    assert [b["leaf00"].shape for b in distinct] == [(16, 256), (16, 257), (16, 258), (16, 259)]
    assert {b["leaf07"].shape for b in same} == {(16, 258)} and len(same[0]) == shapes.LEAVES
    with shapes.forced_transfer():
        assert os.environ["FASTBRIDGE_TRANSFER"] == "device_put"
    assert "FASTBRIDGE_TRANSFER" not in os.environ


def _rounds(scenario, layout, size, values, **extra):
    """Samples of several routes over rounds: ``values`` maps route -> [metric dicts per round]."""
    return [
        {"scenario": scenario, "layout": layout, "size_bytes": size, "route": route, "rep": rep,
         **extra, **m}
        for route, per_round in values.items()
        for rep, m in enumerate(per_round)
    ]  # fmt: skip


def _leaf_samples(layout, auto_rates, copied=0):
    """A leaves case over 3 rounds: sync is fastest of all, thread is the fastest prefetcher."""
    rates = {
        "auto": auto_rates,
        "device_put": [500.0, 500.0, 500.0],
        "thread": [300.0, 320.0, 310.0],
        "grain": [200.0, 210.0, 205.0],
        "big_vision": [100.0, 100.0, 100.0],
    }
    cpu = {"auto": 4e-3, "device_put": 2e-3, "thread": 3e-3, "grain": 3.5e-3, "big_vision": 5e-3}
    values = {
        r: [{"batches_per_s": v, "wall_s": 1 / v, "cpu_s": cpu[r],
             "producer_copied_bytes": copied if r == "auto" else 0} for v in vs]
        for r, vs in rates.items()
    }  # fmt: skip
    values["memcpy"] = [{"cpu_s": 1.5e-3, "wall_s": 1.5e-3}] * 3
    return _rounds("leaves", layout, 16384, values)


def test_leaves_targets_judge_auto_against_the_best_prefetching_peer():
    samples = _leaf_samples("numpy x64", [620.0, 640.0, 600.0], copied=64 * 16384)
    samples += _leaf_samples("tf.data x64", [250.0, 340.0, 300.0])
    samples += _leaf_samples("numpy x1", [400.0, 400.0, 400.0])
    targets = report.check_targets(report.summarize(samples), samples)
    found = {(t["target"], t["where"].split(",")[0]): t for t in targets}
    best = found[("auto batches/s vs best prefetching peer", "leaves numpy 64 x 16 KiB")]
    # The best prefetching peer is thread (route 14), not sync, although sync is faster.
    assert best["versus"] == "thread" and best["where"].endswith("vs route 14")
    assert best["ratio"] == pytest.approx(2.0) and best["met"] is True and best["headline"]
    assert best["low"] == pytest.approx(600 / 310) and best["high"] == pytest.approx(620 / 300)
    sync = found[("auto batches/s vs sync", "leaves numpy 64 x 16 KiB")]
    assert (
        sync["threshold"] == 1.5 and sync["ratio"] == pytest.approx(1.24) and sync["met"] is False
    )
    # A miss must be reported as one: round by round 250/300, 340/320, 300/310.
    missed = found[("auto batches/s vs best prefetching peer", "leaves tf.data 64 x 16 KiB")]
    assert missed["ratio"] == pytest.approx(300 / 310) and missed["met"] is False
    assert report.target_lines([missed])[0][3] == "MISSED (noisy)"
    # One leaf: the ratio against sync is shown for information, without a verdict.
    info = found[("auto batches/s vs sync", "leaves numpy 1 x 16 KiB")]
    assert info["op"] == "info" and info["met"] is None and info["ratio"] == pytest.approx(0.8)
    assert report.target_lines([info])[0][1:] == ("(info)", "0.800 [0.800-0.800]", "info")
    # CPU: against the leanest prefetching peer (thread, 3 ms), plus a memcpy where auto copies.
    ring_cpu = found[("auto CPU per batch vs best peer's", "leaves numpy 64 x 16 KiB")]
    assert "+ one memcpy" in ring_cpu["where"] and ring_cpu["versus"] == "thread"
    assert ring_cpu["ratio"] == pytest.approx(4e-3 / 4.5e-3) and ring_cpu["met"] is True
    direct_cpu = found[("auto CPU per batch vs best peer's", "leaves tf.data 64 x 16 KiB")]
    assert "copies nothing" in direct_cpu["where"]
    assert direct_cpu["ratio"] == pytest.approx(4e-3 / 3e-3) and direct_cpu["met"] is False


def test_shapes_targets():
    mib = 1 << 20
    values = {
        "distinct": [{"wall_s": w, "rss_growth": g * mib} for w, g in ((2e-3, 10), (3e-3, 200))],
        "same": [{"wall_s": w, "rss_growth": 0} for w in (1e-3, 1e-3)],
        "new300": [{"rss_growth": g * mib} for g in (5, 6)],
        "new1000": [{"rss_growth": g * mib} for g in (8, 30)],
    }
    samples = _rounds("shapes", "8", 16384, values)
    forced = {"forced": [{"batches_per_s": v} for v in (900.0, 1100.0)],
              "device_put": [{"batches_per_s": 1000.0}] * 2}  # fmt: skip
    samples += _rounds("forced", "numpy x8", 16384, forced)
    found = {t["target"]: t for t in report.check_targets(report.summarize(samples), samples)}
    shape = found["distinct-shape vs one-shape time per batch"]
    assert shape["ratio"] == pytest.approx(2.5) and shape["met"] is False  # over 1.5
    assert shape["low"] == pytest.approx(2.0) and shape["high"] == pytest.approx(3.0)
    rss = found["RSS growth MiB over the distinct-shape run"]
    assert rss["ratio"] == pytest.approx(105) and rss["high"] == pytest.approx(200)
    assert rss["met"] is True and report.noisy(rss)  # one round went over 150 MiB
    # Memory that grows with the number of shapes: 3 MiB more in one round, 24 in the other.
    more = found["RSS growth MiB over 1000 new shapes minus over 300 (bounded sizes)"]
    assert more["ratio"] == pytest.approx(13.5) and more["met"] is True and report.noisy(more)
    assert (more["low"], more["high"]) == (pytest.approx(3.0), pytest.approx(24.0))
    ceiling = found["forced-route batches/s vs sync"]
    assert ceiling["ratio"] == pytest.approx(1.0) and ceiling["met"] is True
    assert ceiling["headline"] and ceiling["versus"] == "device_put"


def test_headline_lists_auto_against_the_best_peer_first():
    samples = _leaf_samples("numpy x8", [620.0, 640.0, 600.0], copied=8 * 16384)
    handoff = {"auto": [{"wall_s": 5e-3, "consumer_s": 3e-5}] * 2,
               "grain": [{"wall_s": 4e-3, "consumer_s": 2e-5}] * 2,
               "device_put": [{"wall_s": 6e-3, "consumer_s": 1e-3}] * 2}  # fmt: skip
    samples += _rounds("handoff", "dict", 1 << 20, handoff)
    result_targets = report.check_targets(report.summarize(samples), samples)
    rows = headline.rows(result_targets)
    assert [(r.scenario, r.case, r.peer) for r in rows] == [
        ("leaves (no step)", "numpy, 8 x 16 KiB", "14 thread"),
        ("handoff (step)", "6-leaf dict, 1 MiB", "10 grain"),
    ]
    assert rows[0].speed == pytest.approx(2.0) and rows[0].verdict == "met"
    # A wall-time target reads as a speed: the peer's 4 ms against auto's 5 ms is 0.8 x.
    assert rows[1].speed == pytest.approx(0.8) and rows[1].verdict == "MISSED"
    text = headline.text(result_targets)
    assert text.startswith("HEADLINE") and "1 of 2 cases; 1 missed" in text
    lines = text.splitlines()
    assert "numpy, 8 x 16 KiB" in lines[4] and "2.00" in lines[4] and lines[4].endswith("met")
    assert "0.80" in lines[5] and lines[5].endswith("MISSED")
    # The consumer-time target of the handoff: a miss against the prefetching peer (grain).
    (consumer,) = [t for t in result_targets
                   if t["target"] == "auto consumer time vs best prefetching peer"]  # fmt: skip
    assert consumer["ratio"] == pytest.approx(1.5) and consumer["met"] is False
    md = headline.markdown(result_targets, "headline.png")
    assert md[0].startswith("### Headline") and md[6].startswith("| leaves (no step) |")
    assert "**MISSED**" in md[7] and md[-1] == "![headline.png](headline.png)"


def test_headline_plot(tmp_path):
    samples = _leaf_samples("numpy x8", [620.0, 640.0, 600.0])
    summary = report.summarize(samples)
    result = {"meta": {}, "summary": summary, "targets": report.check_targets(summary, samples)}
    written = [os.path.basename(p) for p in plots.draw(result, str(tmp_path))]
    assert written == ["headline.png", "leaves.png"]
    assert (tmp_path / "headline.png").read_bytes().startswith(b"\x89PNG")
    # Without targets in the JSON, the headline is computed from the summary.
    del result["targets"]
    assert "headline.png" in {os.path.basename(p) for p in plots.draw(result, str(tmp_path))}
