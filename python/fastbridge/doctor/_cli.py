"""``python -m fastbridge.doctor MODULE:FACTORY [--step MODULE:FUNCTION] ...``."""

from __future__ import annotations

import argparse
import sys

from ._load import DoctorError, StepError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastbridge.doctor",
        description=(
            "Measure your own dataset, side by side and interleaved: the source alone, each "
            "way of handing its batches to JAX, your step alone and the full loop; then say "
            "which part bounds the job and what to change."
        ),
    )
    p.add_argument(
        "factory",
        help="MODULE:FACTORY, a callable returning a fresh dataset each call (MODULE is "
        "dotted, importable from the current folder, or a path/to/file.py)",
    )
    p.add_argument(
        "--step", help="MODULE:FUNCTION, called as step(batch); its return is waited for"
    )
    p.add_argument("--batches", type=int, default=20, help="batches per measurement and round")
    p.add_argument("--budget", type=float, default=60.0, help="seconds for the whole run")
    p.add_argument("--rounds", type=int, default=5, help="rounds wanted (fewer if they do not fit)")
    p.add_argument("--prefetch", type=int, default=4, help="prefetch of the measured streams")
    p.add_argument("--out", default="doctor-results", help="folder for doctor.json and doctor.png")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _absl_parsed() -> None:
    # Grain reads absl flags (its multiprocess workers too), which raise until parsed; this
    # process is ours, not run by absl.app, so its flags are the defaults.
    try:
        from absl import flags
    except ImportError:
        return
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _absl_parsed()
    from ._diagnose import diagnose

    try:
        result = diagnose(
            args.factory,
            args.step,
            batches=args.batches,
            budget=args.budget,
            rounds=args.rounds,
            prefetch=args.prefetch,
            out=args.out,
            progress=not args.no_progress,
        )
    except (DoctorError, StepError) as error:
        print(f"fastbridge.doctor: error: {error}", file=sys.stderr)
        return 2
    print(result.report())
    return 0
