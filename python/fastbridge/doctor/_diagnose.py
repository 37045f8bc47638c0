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
from ..bench.progress import Progress
from ..bench.report import Ratios, summarize
from . import _advice, _measure
from ._diagnosis import Diagnosis
from ._load import DoctorError, describe, fresh, kind_of, numpy_batches, resolve
from ._report import write

FASTBRIDGE = ("auto", "ring", "numpy", "direct")
SCENARIO = "doctor"


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
    run = _open(factory, step, prefetch, started, float(budget), progress)
    probe = _probe(run)
    chosen = _measure.plan(probe, run.end - time.perf_counter(), batches, rounds)
    if chosen.note:
        run.notes.append(chosen.note)
    samples = _rounds(run, probe, chosen)
    samples = _account(run, probe, samples)
    diagnosis = _conclude(run, samples)
    if out is not None:
        diagnosis = write(diagnosis, os.fspath(out))
    return diagnosis


@dataclasses.dataclass
class _Run:
    """One diagnosis under way: the user's source and step, what to time, the notes so far."""

    name: str
    step_name: str | None
    kind: str
    source: Any
    ctx: _measure.Context
    todo: list[_measure.Measure]
    started: float
    budget: float
    progress: bool
    notes: list[str] = dataclasses.field(default_factory=list)
    stopped: bool = False
    """Whether the budget ran out before every measurement of every round was done."""

    @property
    def end(self) -> float:
        """When the last measurement must be done: the report, JSON and plot come after."""
        return self.started + self.budget - min(2.0, 0.1 * self.budget)


def _open(
    factory: Callable[[], Any] | str,
    step: Callable[[Any], Any] | str | None,
    prefetch: int,
    started: float,
    budget: float,
    progress: bool,
) -> _Run:
    """Resolve the factory and the step, read one batch, compile the step on it, and choose
    the measurements that apply to the source."""
    name = factory if isinstance(factory, str) else describe(factory)
    make = resolve(factory, "factory")
    step_name = None if step is None else step if isinstance(step, str) else describe(step)
    step_fn = None if step is None else resolve(step, "step")
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
    notes = []
    direct = kind == "tf.data" and not pipeline_facts(source).runs_python
    if kind == "tf.data" and not direct:
        notes.append(
            "backend='direct' not measured: the pipeline runs Python code whose arrays "
            "TensorFlow aliases, so batches handed over without a copy could change"
        )
    todo = _measure.measures(kind, step_fn is not None, direct)
    return _Run(name, step_name, kind, source, ctx, todo, started, budget, progress, notes)


def _probe(run: _Run) -> dict[str, dict[str, Any]]:
    """Every measurement once, over a few batches: what each costs, for the plan."""
    bar = Progress(len(run.todo), run.progress)
    probe: dict[str, dict[str, Any]] = {}
    dearest = 0.0  # the longest probe so far: the price of the next one, unknown yet
    try:
        for m in run.todo:
            if time.perf_counter() + dearest >= run.end:
                run.stopped = True
                break
            bar.update(f"probe {m.key}")
            began = time.perf_counter()
            sample = _measure.run(m, run.ctx, _measure.PROBE_BATCHES, run.end)
            dearest = max(dearest, time.perf_counter() - began)
            if sample is not None:
                probe[m.key] = sample
    finally:
        bar.close()
    if not probe and run.stopped:
        raise DoctorError(
            f"budget={run.budget!r} s ran out before the first measurement: importing and "
            f"opening factory {run.name!r} (and compiling the step) took "
            f"{time.perf_counter() - run.started:.1f} s; give a larger budget"
        )
    if not probe:
        raise DoctorError(
            f"factory {run.name!r}: its dataset has no batch left to time after the "
            f"{run.ctx.prefetch + 1} warm-up batches (prefetch + 1); give the doctor a dataset "
            "of more batches, or a smaller prefetch"
        )
    return probe


def _rounds(
    run: _Run, probe: dict[str, dict[str, Any]], chosen: _measure.Plan
) -> list[dict[str, Any]]:
    """The planned rounds, each measurement once per round in the same order, until the
    budget would run out before the next one."""
    bar = Progress(chosen.rounds * len(probe), run.progress and chosen.rounds > 0)
    samples: list[dict[str, Any]] = []
    try:
        for rep in range(chosen.rounds):
            for m in run.todo:
                if m.key not in probe:
                    continue
                cost = probe[m.key]["overhead_s"] + chosen.batches * probe[m.key]["wall_s"]
                if time.perf_counter() + cost > run.end:
                    run.stopped = True
                    run.notes.append(
                        f"the budget ran out in round {rep + 1} of {chosen.rounds}, before "
                        f"{m.key}: stopped early"
                    )
                    return samples
                bar.update(f"round {rep + 1}/{chosen.rounds} {m.key}")
                sample = _measure.run(m, run.ctx, chosen.batches, run.end)
                if sample is not None:
                    samples.append({**sample, "rep": rep, "scenario": SCENARIO})
            if run.stopped:
                break  # the probe already ran out of budget: one round is all there is room for
    finally:
        bar.close()
    return samples


def _account(
    run: _Run, probe: dict[str, dict[str, Any]], samples: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The samples the verdict reads (the probe's when no round was done), with a note for
    everything the budget left out."""
    notes = run.notes
    if not samples:
        notes.append(
            "the budget left no room for a full round: the figures come from the probe "
            f"({_measure.PROBE_BATCHES} batches per measurement); raise --budget"
        )
        samples = [{**s, "rep": 0, "scenario": SCENARIO} for s in probe.values()]
    if run.stopped and not any("budget ran out" in n for n in notes):
        notes.append("the budget ran out during the probe: stopped early")
    missing = [m.key for m in run.todo if m.key not in {s["route"] for s in samples}]
    if missing:
        notes.append(
            f"not measured: {', '.join(missing)}; the verdict rests on the rest (raise the "
            "budget to measure everything)"
        )
    if any(s["truncated"] for s in samples):
        notes.append("some measurements were cut short by the budget")
    return samples


def chosen_batches(samples: list[dict[str, Any]]) -> int:
    return max((int(s["batches"]) for s in samples), default=0)


class _Figures:
    """The samples summarized per measurement (median, lowest and highest round), and the
    lookups the verdict reads."""

    def __init__(self, samples: list[dict[str, Any]]) -> None:
        # "route" is the samples' key for the measurement (the bench's summary groups by it).
        self.summary = {r["route"]: r for r in summarize(samples)}
        self._ratio = Ratios(list(self.summary.values()), samples)

    def __contains__(self, key: str) -> bool:
        return key in self.summary

    def median(self, key: str, metric: str) -> float:
        return float(self.summary[key]["metrics"][metric]["median"])

    def rate(self, key: str) -> float:
        """Median batches/s of ``key``; 0 when it was not measured."""
        return self.median(key, "steps_per_s") if key in self.summary else 0.0

    def spread(self, key: str, metric: str = "steps_per_s") -> tuple[float, float]:
        """The lowest and highest round of ``metric``."""
        values = self.summary[key]["metrics"][metric]
        return float(values["min"]), float(values["max"])

    def paired(self, a: str, b: str) -> tuple[float | None, float | None, float | None]:
        """Round-paired ratio of ``a``'s batches/s to ``b``'s: median, lowest, highest."""
        return self._ratio((SCENARIO, "", 0, a), (SCENARIO, "", 0, b), "steps_per_s")


def _conclude(run: _Run, samples: list[dict[str, Any]]) -> Diagnosis:
    """The figures read into the verdict: what bounds the job, the backend and prefetch to
    use, the pipeline's knobs worth trying."""
    figures = _Figures(samples)
    order = [m for m in run.todo if m.key in figures]
    rows = tuple(
        {"key": m.key, "group": m.group, "label": m.label, **figures.summary[m.key]} for m in order
    )
    with_step = run.step_name is not None
    # With a step, backends are compared by the full loop; without one, by the handoff alone.
    group = "loop:" if with_step else ""
    backend, backend_why, plain_faster = _backend(figures, group, run.notes)
    share = spread = None
    if with_step and f"loop:{backend}" in figures:
        share = figures.median(f"loop:{backend}", "wait_fraction")
        spread = figures.spread(f"loop:{backend}", "wait_fraction")
    part, why = _bound(figures, order, share, spread)
    step_seconds = figures.median("step", "seconds") if "step" in figures else None
    source_times = [s["next_s"] for s in samples if s["route"] == "source"]
    prefetch, prefetch_why = _advice.prefetch_for(source_times, step_seconds)
    knobs: tuple[str, ...] = ()
    if part in ("input pipeline", "balanced"):
        knobs = tuple(_advice.knobs(run.source, run.kind))
    return Diagnosis(
        factory=run.name,
        step=run.step_name,
        kind=run.kind,
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
        ratios=_ratios(figures, order, with_step),
        rounds=len({s["rep"] for s in samples}),
        batches=chosen_batches(samples),
        stopped_early=run.stopped,
        notes=tuple(run.notes),
        seconds=time.perf_counter() - run.started,
        budget=run.budget,
        samples=tuple(samples),
    )


def _ratios(
    figures: _Figures, order: list[_measure.Measure], with_step: bool
) -> dict[str, tuple[float | None, float | None, float | None]]:
    """Every fastbridge backend against the plain loop and against auto, round-paired."""
    group = "loop:" if with_step else ""
    ratios: dict[str, tuple[float | None, float | None, float | None]] = {}
    for m in order:
        if m.handoff in FASTBRIDGE and m.group == ("loop" if with_step else "handoff"):
            ratios[f"{m.key} / {group}device_put"] = figures.paired(m.key, f"{group}device_put")
            if m.handoff != "auto":
                ratios[f"{m.key} / {group}auto"] = figures.paired(m.key, f"{group}auto")
    return ratios


def _backend(figures: _Figures, group: str, notes: list[str]) -> tuple[str, str, bool]:
    """``(backend, why, plain_loop_faster)``: auto unless another backend beat it in every
    round; a note when the plain ``device_put`` loop beat every backend in every round."""
    candidates = [b for b in FASTBRIDGE if f"{group}{b}" in figures]
    best = max(candidates, key=lambda b: figures.rate(f"{group}{b}"), default="auto")
    backend, why = "auto", "auto was the fastest fastbridge backend here"
    if best != "auto":
        med, low, _ = figures.paired(f"{group}{best}", f"{group}auto")
        if med is not None and med > 1.0 and (low is None or low > 1.0):
            backend = best
            why = f"{best} gave {med:.2f}x auto's batches/s" + (
                f" in every round (lowest {low:.2f}x)" if low is not None else ""
            )
        else:
            why = (
                f"{best} had the best median, but was not faster than auto in every round: "
                "the difference is within the noise, so keep auto"
            )
    plain = figures.paired(f"{group}{backend}", f"{group}device_put")
    if plain[0] is not None:
        why += f"; {plain[0]:.2f}x the batches/s of the plain jax.device_put loop"
    # The plain loop wins only if it beat every backend in every round, by more than noise.
    against = [figures.paired(f"{group}{b}", f"{group}device_put") for b in candidates]
    plain_faster = bool(against) and all(
        med is not None and med < 0.95 and (high is None or high < 1.0) for med, _, high in against
    )
    if plain_faster:
        notes.append(
            "the plain jax.device_put loop was faster than every fastbridge backend in every "
            "round: at this batch size, on this machine, the thread that hands batches over "
            "costs more (cores, memory bandwidth) than it hides"
        )
    return backend, why, plain_faster


def _bound(
    figures: _Figures,
    order: list[_measure.Measure],
    share: float | None,
    spread: tuple[float, float] | None,
) -> tuple[str, str]:
    """``_advice.bound`` on the figures: the source, the best handoff, the step and the
    chosen backend's loop wait (``share``, with ``spread`` its lowest and highest round)."""
    handoffs = [m.key for m in order if m.group == "handoff"]
    best_handoff = max(handoffs, key=figures.rate, default=None)
    step_rate = figures.rate("step") if "step" in figures else None
    ranges = None
    if best_handoff is not None and step_rate is not None:
        ranges = (figures.spread(best_handoff), figures.spread("step"))
    return _advice.bound(
        figures.rate("source"),
        figures.rate(best_handoff) if best_handoff is not None else 0.0,
        share,
        step_rate,
        wait_range=spread,
        ranges=ranges,
    )
