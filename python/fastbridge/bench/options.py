"""The command line of ``python -m fastbridge.bench``: options and the two profiles."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

QUICK = {
    "sizes": "64K,1M,16M,64M",
    "layouts": "f32,dict",
    "repeats": 3,
    "batches": 6,
    "warmup": 2,
    "throughput_sizes": "1M,64M",
    "throughput_layouts": "f32",
    "throughput_batches": 6,
    "copy_sizes": "64M",
    "e2e_steps": 15,
    "e2e_warmup": 3,
    "e2e_repeats": 2,
    "e2e_batch": 128,
    "memory_batches": 300,
    "sharded_sizes": "1M,16M",
    "sharded_layouts": "f32",
    "leaves_batches": 200,
    "shapes_batches": 150,
}
FULL = {
    "sizes": "64K,1M,16M,64M",
    "layouts": "f32,dict",
    "repeats": 5,
    "batches": 30,
    "warmup": 3,
    "throughput_sizes": "64K,1M,16M,64M,256M",
    "throughput_layouts": "f32,dict",
    "throughput_batches": 40,
    "copy_sizes": "16M,64M,256M",
    "e2e_steps": 200,
    "e2e_warmup": 20,
    "e2e_repeats": 5,
    "e2e_batch": 256,
    "memory_batches": 10_000,
    "sharded_sizes": "64K,1M,16M,64M",
    "sharded_layouts": "f32,dict",
    "leaves_batches": 500,
    "shapes_batches": 300,
}
SCENARIOS = ("handoff", "throughput", "e2e", "memory", "sharded", "leaves", "shapes")


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where it is one: options left unset take their value from the
    profile (``[quick ..., full ...]`` in their help), which "(default: None)" would hide."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


class _DeprecatedAlias(argparse.Action):
    """An option's old name: stores into the new one's ``dest`` and says so on stderr."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        print(
            f"{option_string} is deprecated, use --{self.dest.replace('_', '-')}",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, values)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastbridge.bench",
        description=(
            "Measure every way of handing tf.data batches to JAX side by side, on a built-in "
            "synthetic dataset (no downloads). Routes: 1 tutorial copy (jnp.array per leaf), "
            "2 as_numpy_iterator + device_put, 3 EagerTensor -> jax.dlpack by hand, "
            "4 flax-style deque of device_put, 5 fastbridge ring, 6 numpy, 7 direct, 8 auto, "
            "9 the floor (iterate as_numpy_iterator only), and the peers: 10 Grain's "
            "experimental.device_put pipeline, 11 Keras's model.fit input path on JAX, "
            "12 big_vision's memoryview + per-device shards, 13 "
            "jax.make_array_from_process_local_data, 14 device_put in a thread into a queue "
            "(Grain and Keras are skipped with a note when not installed). Routes run "
            "interleaved "
            "(A B C ... A B C ...) and repeated; tables show medians with [min-max]. Writes "
            "results.json (every raw sample), summary.md (paste into benches/RESULTS.md) and "
            "PNG plots into --out; the printed summary and summary.md open with the headline: "
            "fastbridge's default stream against the best peer, case by case. See "
            "benches/README.md."
        ),
        formatter_class=_DefaultsFormatter,
    )
    _general(p)
    _handoff_scenario(p)
    _others(p)
    _leaves(p)
    return p


def _general(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--quick",
        action="store_true",
        help="small sizes, few repeats: about four minutes on 2 cores. Options given "
        "explicitly still override it",
    )
    p.add_argument(
        "--out",
        default="bench-results",
        help="directory for results.json, summary.md and the plots",
    )
    p.add_argument(
        "--device",
        choices=("cpu", "gpu"),
        default="cpu",
        help="cpu: the scenarios below. gpu: host-to-device GB/s from pinned ring "
        "slots vs pageable NumPy vs device_put of a fresh array; says so and "
        "exits 0 when JAX sees no GPU",
    )
    p.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help="comma-separated subset of: handoff (one cached batch repeated, a "
        "jitted CPU step after each), throughput (no step, plus memcpy and ring "
        "slot fill at the same thread count), e2e (a real tf.data pipeline "
        "feeding a jitted MLP train step), memory (RSS and page faults), sharded (the "
        "handoff with batches split over --sharded-devices CPU devices by "
        "NamedSharding(Mesh(devices, ('batch',)), P('batch')), in a subprocess that forces "
        "that many host devices; only routes that take a sharding), leaves (no step: "
        "dicts of 1, 8 and 64 float32 leaves from a list of NumPy dicts and from tf.data, "
        "auto against sync, thread, Grain and big_vision), shapes (FASTBRIDGE_TRANSFER="
        "device_put: every batch a new shape against one shape, and that route's ceiling)",
    )
    p.add_argument(
        "--routes",
        default="all",
        help="comma-separated route numbers or names (tutorial, device_put, dlpack, "
        "flax_prefetch, ring, numpy, direct, auto, floor, grain, keras, big_vision, "
        "process_local), or 'all'",
    )
    # The option's earlier name, kept so that existing commands still run; not in --help.
    p.add_argument("--paths", dest="routes", action=_DeprecatedAlias, help=argparse.SUPPRESS)
    p.add_argument("--prefetch", type=int, default=4, help="prefetch of the fastbridge routes")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="copy threads for the ring and for the memcpy baseline [min(2, cores)]",
    )
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _handoff_scenario(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--sizes",
        default=None,
        help="handoff batch sizes, e.g. 64K,1M,16M,64M [quick/full: 64K,1M,16M,64M]",
    )
    p.add_argument(
        "--layouts",
        default=None,
        help="handoff layouts: f32 (one float32 leaf) and/or dict (6 leaves: uint8 "
        "image, float32 features, float64, int64, bool mask, float16)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="interleaved rounds over all routes [quick 3, full 5]",
    )
    p.add_argument(
        "--batches",
        type=int,
        default=None,
        help="measured batches per route per round in handoff [quick 6, full 30]",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="batches per run before measuring (at least 2) [quick 2, full 3]",
    )
    p.add_argument(
        "--step-ms",
        type=float,
        default=5.0,
        help="target duration of the handoff's jitted CPU step (the targets assume 4 to "
        "10 ms); the measured duration is printed and recorded",
    )


def _others(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--throughput-sizes",
        default=None,
        help="throughput batch sizes [quick 1M,64M; full 64K,1M,16M,64M,256M]",
    )
    p.add_argument("--throughput-layouts", default=None, help="throughput layouts [quick f32]")
    p.add_argument(
        "--throughput-batches",
        type=int,
        default=None,
        help="most batches per throughput run (fewer for huge batches)",
    )
    p.add_argument(
        "--copy-sizes",
        default=None,
        help="sizes for memcpy vs ring slot fill [quick 64M; full 16M,64M,256M]",
    )
    p.add_argument(
        "--e2e-steps", type=int, default=None, help="train steps per e2e run [quick 15, full 200]"
    )
    p.add_argument(
        "--e2e-warmup",
        type=int,
        default=None,
        help="steps per e2e run before measuring, while tf.data's autotuner settles and the "
        "shuffle buffer fills [quick 3, full 20]",
    )
    p.add_argument(
        "--e2e-repeats", type=int, default=None, help="interleaved e2e rounds [quick 2, full 5]"
    )
    p.add_argument(
        "--e2e-batch", type=int, default=None, help="examples per e2e batch (32x32x3) [quick 128]"
    )
    p.add_argument("--e2e-hidden", type=int, default=256, help="hidden units of the e2e MLP")
    p.add_argument("--memory-size", default="1M", help="batch size of the memory scenario")
    p.add_argument(
        "--memory-batches",
        type=int,
        default=None,
        help="batches per route in the memory scenario [quick 300, full 10000]",
    )
    p.add_argument(
        "--sharded-sizes",
        default=None,
        help="sharded batch sizes [quick 1M,16M; full 64K,1M,16M,64M]",
    )
    p.add_argument(
        "--sharded-layouts", default=None, help="sharded layouts [quick f32; full f32,dict]"
    )
    p.add_argument(
        "--sharded-devices",
        type=int,
        default=8,
        help="devices the sharded scenario splits each batch over (forced CPU devices)",
    )


def _leaves(p: argparse.ArgumentParser) -> None:
    p.add_argument("--leaves-counts", default="1,8,64", help="float32 leaves per batch in leaves")
    p.add_argument("--leaves-sizes", default="16K,1M", help="bytes of each leaf in leaves")
    p.add_argument(
        "--leaves-kinds",
        default="numpy,tf.data",
        help="leaves sources: numpy (a list repeating one dict, as Grain and Hugging Face yield "
        "them; auto resolves to ring) and tf.data (from_tensors(batch).repeat(); auto "
        "resolves to direct)",
    )
    p.add_argument(
        "--leaves-batches",
        type=int,
        default=None,
        help="most measured batches per leaves run; a run moves at most that many MiB, and "
        "at least 8 batches [quick 200, full 500]",
    )
    p.add_argument(
        "--shapes-batches",
        type=int,
        default=None,
        help="measured batches per shapes run, each of a new shape in the distinct run "
        "[quick 150, full 300]",
    )
    p.add_argument(
        "--shapes-counts",
        default="8,64",
        help="leaves per batch (16 KiB each) of the forced route's ceiling in shapes",
    )


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with the profile's values where options were left unset, checked."""
    profile = QUICK if args.quick else FULL
    for key, value in profile.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.warmup < 2:
        raise SystemExit("--warmup must be at least 2 (two live batches tell copies apart)")
    if args.e2e_warmup < 0:
        raise SystemExit("--e2e-warmup must be at least 0")
    for name in (
        "repeats",
        "batches",
        "throughput_batches",
        "e2e_steps",
        "e2e_repeats",
        "memory_batches",
        "leaves_batches",
        "shapes_batches",
        "prefetch",
        "sharded_devices",
    ):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be at least 1")
    if args.threads is None:
        args.threads = min(2, os.cpu_count() or 1)
    return args
