"""The headline: in each scenario and case, fastbridge's default stream against the best peer.

Every headline ratio is a speed: how many times as fast as the best peer ``auto`` ran (above 1,
fastbridge is faster), whatever the target it comes from measures (a time ratio is inverted,
with its bracket). The verdict is the target's own.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .cells import render_text
from .routes import BY_KEY
from .targets import noisy, verdict

SCENARIOS = {
    "leaves": "leaves (no step)",
    "handoff": "handoff (step)",
    "sharded": "sharded (step)",
    "e2e": "end to end",
    "forced": "shapes (forced route)",
}
"""Headline scenarios in the order the table lists them, and their names there."""
TITLE = "HEADLINE: fastbridge stream(ds) (auto) against the best peer, case by case"
EXPLAIN = (
    "x = how many times as fast as the best peer (above 1: fastbridge is faster); "
    "median over interleaved rounds [worst-best round]"
)


@dataclasses.dataclass(frozen=True)
class Row:
    """One headline line: ``speed`` is auto's speed over the peer's, ``goal`` the least it
    must be; ``low`` and ``high`` bracket the rounds (``None`` when not paired)."""

    scenario: str
    case: str
    key: str
    """The scenario as the samples name it (``leaves``, ``handoff``, ``forced``, ...)."""
    peer: str
    speed: float | None
    low: float | None
    high: float | None
    goal: float
    verdict: str

    @property
    def bracket(self) -> str:
        if self.low is None or self.high is None:
            return ""
        return f"[{self.low:.2f}-{self.high:.2f}]"


def _peer(key: str | None) -> str:
    handoff = BY_KEY.get(key or "")
    return f"{handoff.number} {handoff.key}" if handoff else (key or "-")


def as_speed(target: dict[str, Any]) -> tuple[float | None, float | None, float | None, float]:
    """``(speed, low, high, goal)`` of a target: a time ratio (``<=``) inverted, so that
    above 1 always means auto is faster."""
    value, low, high = target["ratio"], target.get("low"), target.get("high")
    goal = float(target["threshold"])
    if target["op"] != "<=":
        return value, low, high, goal
    inverse = [None if v is None or v == 0 else 1.0 / v for v in (value, high, low)]
    return inverse[0], inverse[1], inverse[2], 1.0 / goal if goal else goal


def rows(targets: list[dict[str, Any]]) -> list[Row]:
    """The headline targets, by scenario (in :data:`SCENARIOS` order), then as measured."""
    out = []
    for t in targets:
        if not t.get("headline"):
            continue
        speed, low, high, goal = as_speed(t)
        name = SCENARIOS.get(t["scenario"], t["scenario"])
        peer = _peer(t.get("versus"))
        out.append(Row(name, t["case"], t["scenario"], peer, speed, low, high, goal, verdict(t)))
    order = list(SCENARIOS.values())
    return sorted(out, key=lambda r: order.index(r.scenario) if r.scenario in order else 99)


def sentence(targets: list[dict[str, Any]]) -> str:
    """The headline in one sentence, and how far its verdicts can be trusted."""
    heads = [t for t in targets if t.get("headline") and t["met"] is not None]
    if not heads:
        return "No headline comparison was measured (neither auto nor a peer ran)."
    won = sum(t["met"] is True for t in heads)
    missed = [t for t in heads if t["met"] is False]
    said = f"auto met its goal against the best peer in {won} of {len(heads)} cases"
    if not missed:
        return said + "."
    shaky = sum(noisy(t) for t in missed)
    said += f"; {len(missed)} missed"
    if shaky:
        said += f" ({shaky} of them noisy: their rounds disagree, so rerun before reading them)"
    return said + "."


def table(targets: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the headline table."""
    found = rows(targets)
    show_goal = any(abs(r.goal - 1.0) > 1e-9 for r in found)
    header = ["scenario", "case", "best peer", "auto x", "rounds", "verdict"]
    if show_goal:
        header.insert(5, "goal")
    cells = []
    for r in found:
        line = [r.scenario, r.case, r.peer, "n/a" if r.speed is None else f"{r.speed:.2f}"]
        line.append(r.bracket)
        if show_goal:
            line.append(f">= {r.goal:.2f}")
        cells.append([*line, r.verdict])
    return header, cells


def text(targets: list[dict[str, Any]]) -> str:
    """The headline table as plain text, then :func:`sentence`."""
    header, cells = table(targets)
    if not cells:
        return f"{TITLE}\n{sentence(targets)}"
    rendered = render_text((f"{TITLE}\n{EXPLAIN}", header, cells), left=3)
    return f"{rendered}\n{sentence(targets)}"


def markdown(targets: list[dict[str, Any]], plot: str | None = None) -> list[str]:
    """The headline section of the Markdown report (``plot``: the headline figure's file)."""
    header, cells = table(targets)
    lines = ["### Headline: fastbridge against the best peer", "", EXPLAIN + ".", ""]
    if cells:
        align = ["---:" if h in ("auto x", "rounds") else "---" for h in header]
        lines += ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
        for line in cells:
            said = f"**{line[-1]}**" if line[-1].startswith("MISSED") else line[-1]
            lines.append("| " + " | ".join([*line[:-1], said]) + " |")
        lines.append("")
    lines.append(sentence(targets))
    if plot:
        lines += ["", f"![{plot}]({plot})"]
    return lines
