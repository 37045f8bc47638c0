"""``diagnose()``: open the factory, probe, plan the rounds, run them, and read the verdict."""

from __future__ import annotations

import dataclasses
import os
import time
import typing
from collections.abc import Callable
from typing import Any

import jax

from .._position import close_iterator
from .._tfdata import pipeline_facts
from ..bench.cli import Progress
from ..bench.report import Ratios, summarize
from . import _advice, _measure
from ._load import DoctorError, describe, fresh, kind_of, numpy_batches, resolve

FASTBRIDGE = ("auto", "ring", "numpy", "direct")
SCENARIO = "doctor"


@dataclasses.dataclass(frozen=True)
class Diagnosis:
    """What bounds the job, and what to change. ``report()`` says it; ``to_json()`` has all."""

    factory: str
    step: str | None
    kind: str
    """``tf.data``, ``grain`` or ``iterable``."""
    bound: str
    """``input pipeline``, ``handoff``, ``step``, or ``balanced`` when the input side and the
    step cannot be told apart: the loop's input wait is within 5 points of the input-bound
    threshold (or its rounds fall on both sides of it), or the best handoff alone and the step
    alone deliver batches/s within 15% of each other (or with overlapping rounds)."""
    why: str
    input_bound_share: float | None
    """Share of the loop's time spent waiting for input (``None`` without a step)."""
    backend: str
    backend_why: str
    plain_loop_faster: bool
    """The plain ``jax.device_put`` loop beat every fastbridge backend in every round."""
    prefetch: int
    prefetch_why: str
    knobs: tuple[str, ...]
    """Settings of the pipeline worth trying (when the input pipeline bounds the job, or the
    job is balanced)."""
    rows: tuple[dict[str, Any], ...]
    """Per measurement: label, group and median/min/max of every metric over rounds."""
    ratios: dict[str, tuple[float | None, float | None, float | None]]
    """Round-paired ratios ``(median, lowest, highest)`` of batches/s."""
    rounds: int
    batches: int
    stopped_early: bool
    notes: tuple[str, ...]
    seconds: float
    budget: float
    samples: tuple[dict[str, Any], ...] = dataclasses.field(repr=False)
    files: tuple[str, ...] = ()

    def report(self) -> str:
        from ._report import text

        return text(self)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check(name: str, value: Any, kind: type, low: float) -> None:
    allowed: tuple[type, ...] = (int, float) if kind is float else (kind,)
    if isinstance(value, bool) or not isinstance(value, allowed):
        raise DoctorError(f"{name} must be a {kind.__name__}, got {type(value).__name__} {value!r}")
    number = typing.cast(float, value)
    if not number >= low:
        raise DoctorError(f"{name} must be at least {low:g}, got {value!r}")


def diagnose(
    factory: Callable[[], Any] | str,
    step: Callable[[Any], Any] | str | None = None,
    *,
    batches: int = 20,
    budget: float = 60.0,
    rounds: int = 5,
    prefetch: int = 4,
    out: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> Diagnosis:
    """Measure the user's own data and say which part bounds the job.

    ``factory`` returns a fresh dataset on each call (a ``tf.data.Dataset``, a Grain
    ``MapDataset``/``IterDataset``/``DataLoader`` or any iterable of NumPy batches), as a
    callable or ``"MODULE:NAME"``. ``step`` is called as ``step(batch)`` with one batch of
    ``jax.Array`` leaves; its return, whatever it is, is waited for. Keep train state in a
    closure or object. ``batches`` is per measurement and round; everything fits in
    ``budget`` seconds (fewer batches or rounds when it must, said in ``notes``). With
    ``out``, a JSON of the figures and one plot are written there.

    >>> import numpy as np
    >>> d = diagnose(lambda: [np.ones((4, 8), np.float32)] * 40, budget=20, progress=False)
    >>> d.bound in ("input pipeline", "handoff"), d.kind, d.input_bound_share
    (True, 'iterable', None)
    """
    started = time.perf_counter()
    _check("batches", batches, int, 1)
    _check("budget", budget, float, 0.1)
    _check("rounds", rounds, int, 1)
    _check("prefetch", prefetch, int, 1)
    deadline = started + float(budget)
    # The report, the JSON and the plot come after the last measurement.
    end = deadline - min(2.0, 0.1 * float(budget))
    name = factory if isinstance(factory, str) else describe(factory)
    make = resolve(factory, "factory")
    step_name = None if step is None else step if isinstance(step, str) else describe(step)
    step_fn = None if step is None else resolve(step, "step")

    notes: list[str] = []
    source = fresh(make, name)
    kind = kind_of(source)
    iterator = numpy_batches(source)
    try:
        first = next(iterator, None)
    finally:
        close_iterator(iterator)
    if first is None:
        raise DoctorError(f"factory {name!r} returned an empty dataset (no batch to measure)")
    resident = jax.block_until_ready(jax.device_put(first))  # type: ignore[no-untyped-call]
    ctx = _measure.Context(make, name, step_fn, step_name or "", resident, prefetch)
    if step_fn is not None:
        _measure.call_step(ctx, resident)  # compiles, and fails early with a clear message

    direct = kind == "tf.data" and not pipeline_facts(source).runs_python
    if kind == "tf.data" and not direct:
        notes.append(
            "backend='direct' not measured: the pipeline runs Python code whose arrays "
            "TensorFlow aliases, so batches handed over without a copy could change"
        )
    todo = _measure.measures(kind, step_fn is not None, direct)
    bar = Progress(len(todo), progress)
    samples: list[dict[str, Any]] = []
    stopped = False
    try:
        probe: dict[str, dict[str, Any]] = {}
        dearest = 0.0  # the longest probe so far: the price of the next one, unknown yet
        for m in todo:
            if time.perf_counter() + dearest >= end:
                stopped = True
                break
            bar.update(f"probe {m.key}")
            began = time.perf_counter()
            sample = _measure.run(m, ctx, _measure.PROBE_BATCHES, end)
            dearest = max(dearest, time.perf_counter() - began)
            if sample is not None:
                probe[m.key] = sample
        if not probe and stopped:
            raise DoctorError(
                f"budget={budget!r} s ran out before the first measurement: importing and "
                f"opening factory {name!r} (and compiling the step) took "
                f"{time.perf_counter() - started:.1f} s; give a larger budget"
            )
        if not probe:
            raise DoctorError(
                f"factory {name!r}: its dataset has no batch left to time after the "
                f"{prefetch + 1} warm-up batches (prefetch + 1); give the doctor a dataset "
                "of more batches, or a smaller prefetch"
            )
        chosen = _measure.plan(probe, end - time.perf_counter(), batches, rounds)
        if chosen.note:
            notes.append(chosen.note)
        bar.close()
        bar = Progress(chosen.rounds * len(probe), progress and chosen.rounds > 0)
        for rep in range(chosen.rounds):
            for m in todo:
                if m.key not in probe:
                    continue
                cost = probe[m.key]["overhead_s"] + chosen.batches * probe[m.key]["wall_s"]
                if time.perf_counter() + cost > end:
                    stopped = True
                    notes.append(
                        f"the budget ran out in round {rep + 1} of {chosen.rounds}, before "
                        f"{m.key}: stopped early"
                    )
                    break
                bar.update(f"round {rep + 1}/{chosen.rounds} {m.key}")
                sample = _measure.run(m, ctx, chosen.batches, end)
                if sample is not None:
                    samples.append({**sample, "rep": rep, "scenario": SCENARIO})
            if stopped:
                break
    finally:
        bar.close()
    done = {s["rep"] for s in samples}
    if not samples:
        notes.append(
            "the budget left no room for a full round: the figures come from the probe "
            f"({_measure.PROBE_BATCHES} batches per measurement); raise --budget"
        )
        samples = [{**s, "rep": 0, "scenario": SCENARIO} for s in probe.values()]
        done = {0}
    if stopped and not any("budget ran out" in n for n in notes):
        notes.append("the budget ran out during the probe: stopped early")
    missing = [m.key for m in todo if m.key not in {s["route"] for s in samples}]
    if missing:
        notes.append(
            f"not measured: {', '.join(missing)}; the verdict rests on the rest (raise the "
            "budget to measure everything)"
        )
    if any(s["truncated"] for s in samples):
        notes.append("some measurements were cut short by the budget")
    return _conclude(
        name, step_name, kind, source, todo, samples, len(done), chosen_batches(samples),
        stopped, notes, started, float(budget), out,
    )  # fmt: skip


def chosen_batches(samples: list[dict[str, Any]]) -> int:
    return max((int(s["batches"]) for s in samples), default=0)


def _conclude(
    name: str,
    step_name: str | None,
    kind: str,
    source: Any,
    todo: list[_measure.Measure],
    samples: list[dict[str, Any]],
    rounds: int,
    batches: int,
    stopped: bool,
    notes: list[str],
    started: float,
    budget: float,
    out: str | os.PathLike[str] | None,
) -> Diagnosis:
    summary = {r["route"]: r for r in summarize(samples)}
    ratio = Ratios(list(summary.values()), samples)
    order = [m for m in todo if m.key in summary]
    rows = tuple(
        {"key": m.key, "group": m.group, "label": m.label, **summary[m.key]} for m in order
    )

    def rate(key: str) -> float:
        row = summary.get(key)
        return float(row["metrics"]["steps_per_s"]["median"]) if row else 0.0

    def spread_of(row: dict[str, Any]) -> tuple[float, float]:
        rates = row["metrics"]["steps_per_s"]
        return float(rates["min"]), float(rates["max"])

    def paired(a: str, b: str) -> tuple[float | None, float | None, float | None]:
        return ratio((SCENARIO, "", 0, a), (SCENARIO, "", 0, b), "steps_per_s")

    with_step = step_name is not None
    group = "loop:" if with_step else ""
    ratios: dict[str, tuple[float | None, float | None, float | None]] = {}
    for m in order:
        if m.route in FASTBRIDGE and m.group == ("loop" if with_step else "handoff"):
            ratios[f"{m.key} / {group}device_put"] = paired(m.key, f"{group}device_put")
            if m.route != "auto":
                ratios[f"{m.key} / {group}auto"] = paired(m.key, f"{group}auto")

    candidates = [b for b in FASTBRIDGE if f"{group}{b}" in summary]
    best = max(candidates, key=lambda b: rate(f"{group}{b}"), default="auto")
    backend, backend_why = "auto", "auto was the fastest fastbridge backend here"
    if best != "auto":
        med, low, _ = paired(f"{group}{best}", f"{group}auto")
        if med is not None and med > 1.0 and (low is None or low > 1.0):
            backend = best
            backend_why = f"{best} gave {med:.2f}x auto's batches/s" + (
                f" in every round (lowest {low:.2f}x)" if low is not None else ""
            )
        else:
            backend_why = (
                f"{best} had the best median, but was not faster than auto in every round: "
                "the difference is within the noise, so keep auto"
            )
    plain = paired(f"{group}{backend}", f"{group}device_put")
    if plain[0] is not None:
        backend_why += f"; {plain[0]:.2f}x the batches/s of the plain jax.device_put loop"
    # The plain loop wins only if it beat every backend in every round, by more than noise.
    against = [paired(f"{group}{b}", f"{group}device_put") for b in candidates]
    plain_faster = bool(against) and all(
        med is not None and med < 0.95 and (high is None or high < 1.0) for med, _, high in against
    )
    if plain_faster:
        notes.append(
            "the plain jax.device_put loop was faster than every fastbridge backend in every "
            "round: at this batch size, on this machine, the thread that hands batches over "
            "costs more (cores, memory bandwidth) than it hides"
        )

    share = spread = None
    if with_step and f"loop:{backend}" in summary:
        waits = summary[f"loop:{backend}"]["metrics"]["wait_fraction"]
        share, spread = float(waits["median"]), (float(waits["min"]), float(waits["max"]))
    handoffs = [m.key for m in order if m.group == "handoff"]
    best_handoff = max(handoffs, key=rate, default=None)
    step_rate = rate("step") if "step" in summary else None
    ranges = None
    if best_handoff is not None and step_rate is not None:
        ranges = (spread_of(summary[best_handoff]), spread_of(summary["step"]))
    part, why = _advice.bound(
        rate("source"),
        rate(best_handoff) if best_handoff is not None else 0.0,
        share,
        step_rate,
        wait_range=spread,
        ranges=ranges,
    )
    step_seconds = None
    if "step" in summary:
        step_seconds = float(summary["step"]["metrics"]["seconds"]["median"])
    source_times = [s["next_s"] for s in samples if s["route"] == "source"]
    prefetch, prefetch_why = _advice.prefetch_for(source_times, step_seconds)
    knobs = tuple(_advice.knobs(source, kind)) if part in ("input pipeline", "balanced") else ()
    diagnosis = Diagnosis(
        factory=name,
        step=step_name,
        kind=kind,
        bound=part,
        why=why,
        input_bound_share=share,
        backend=backend,
        backend_why=backend_why,
        plain_loop_faster=plain_faster,
        prefetch=prefetch,
        prefetch_why=prefetch_why,
        knobs=knobs,
        rows=rows,
        ratios=ratios,
        rounds=rounds,
        batches=batches,
        stopped_early=stopped,
        notes=tuple(notes),
        seconds=time.perf_counter() - started,
        budget=budget,
        samples=tuple(samples),
    )
    if out is not None:
        from ._report import write

        diagnosis = write(diagnosis, os.fspath(out))
    return diagnosis
