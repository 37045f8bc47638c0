"""Benchmark of the whole-dataset conversions (``fastbridge.to_numpy`` and ``from_numpy``).

to_numpy against the two usual recipes, and from_numpy against from_tensor_slices. Every
measurement runs in a fresh subprocess, so ``ru_maxrss`` (the peak RSS) belongs to one recipe.

How TensorFlow's own memory is taken out: the child imports TensorFlow, builds the dataset and
pulls one element through a *separate* iterator (which starts TF's runtime and thread pools),
then records ``ru_maxrss`` as its baseline. The recipe runs next; "peak extra" is the final
``ru_maxrss`` minus that baseline, and is compared with the size of the output.

    python benches/convert_bench.py                  # 1 GiB output, 3 repeats
    python benches/convert_bench.py --size-mib 256 --repeats 1

Prints Markdown tables (medians over the repeats; recipes interleaved).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

MiB = 1 << 20
ROW_FLOATS = 1024  # one row: 4 KiB of float32
BATCH_ROWS = 256  # one batch: 1 MiB
ELEMENT_FLOATS = 16384  # one unbatched element: 64 KiB

TO_NUMPY_RECIPES = {
    # name: (dataset kind, description)
    "to_numpy": ("batched", "fastbridge.to_numpy(ds)"),
    "to_numpy_unknown": ("batched_unknown", "fastbridge.to_numpy(ds) (unknown cardinality)"),
    "concat": ("batched", "np.concatenate(list(ds.as_numpy_iterator()))"),
    "array_list": ("batched", "np.array(list(ds.as_numpy_iterator()))"),
    "to_numpy_rows": ("unbatched", "fastbridge.to_numpy(ds)"),
    "array_list_rows": ("unbatched", "np.array(list(ds.as_numpy_iterator()))"),
}
FROM_NUMPY_RECIPES = {
    "from_numpy": "fastbridge.from_numpy(x, batch_size=256)",
    "from_tensor_slices": "tf.data.Dataset.from_tensor_slices(x).batch(256)",
}


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def cpu_time() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def make_dataset(kind: str, size: int):
    import tensorflow as tf

    if kind == "unbatched":
        n = size // (ELEMENT_FLOATS * 4)
        ds = tf.data.Dataset.range(n)
        return ds.map(lambda i: tf.fill([ELEMENT_FLOATS], tf.cast(i, tf.float32)))
    n = size // (BATCH_ROWS * ROW_FLOATS * 4)
    ds = tf.data.Dataset.range(n)
    if kind == "batched_unknown":
        ds = ds.filter(lambda i: i >= 0)
    # A fresh 1 MiB buffer per batch, as a real pipeline's batch() makes.
    return ds.map(lambda i: tf.fill([BATCH_ROWS, ROW_FLOATS], tf.cast(i, tf.float32)))


def child_to_numpy(recipe: str, size: int) -> dict:
    import fastbridge
    import numpy as np
    import tensorflow as tf
    from fastbridge.convert import to_numpy

    kind = TO_NUMPY_RECIPES[recipe][0]
    ds = make_dataset(kind, size)
    next(iter(ds.take(1)))
    tf.constant(0)
    base = peak_rss()
    t0, c0 = time.perf_counter(), cpu_time()
    if recipe.startswith("to_numpy"):
        out = to_numpy(ds)
    elif recipe == "concat":
        out = np.concatenate(list(ds.as_numpy_iterator()))
    else:
        out = np.array(list(ds.as_numpy_iterator()))
    wall, cpu = time.perf_counter() - t0, cpu_time() - c0
    peak = peak_rss()
    last = float(out.reshape(-1)[-1])
    return {
        "wall": wall,
        "cpu": cpu,
        "extra": peak - base,
        "baseline": base,
        "out_bytes": int(out.nbytes),
        "last": last,
        "core": fastbridge.core_available(),
    }


def child_from_numpy(recipe: str, size: int) -> dict:
    import numpy as np
    import tensorflow as tf
    from fastbridge.convert import from_numpy

    x = np.ones((size // (ROW_FLOATS * 4), ROW_FLOATS), np.float32)
    tf.data.Dataset.range(2).map(lambda i: i + 1).reduce(tf.constant(0, tf.int64), lambda a, b: a)
    base = peak_rss()
    t0 = time.perf_counter()
    if recipe == "from_numpy":
        ds = from_numpy(x, batch_size=BATCH_ROWS)
    else:
        ds = tf.data.Dataset.from_tensor_slices(x).batch(BATCH_ROWS)
    it = ds.as_numpy_iterator()
    first = next(it)
    startup = time.perf_counter() - t0
    startup_extra = peak_rss() - base
    t1 = time.perf_counter()
    rows = len(first) + sum(len(b) for b in it)
    epoch = time.perf_counter() - t1
    assert rows == len(x)
    return {
        "startup": startup,
        "epoch": epoch,
        "startup_extra": startup_extra,
        "extra": peak_rss() - base,
        "out_bytes": int(x.nbytes),
    }


def run_child(mode: str, recipe: str, size: int) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    cmd = [sys.executable, __file__, "--child", mode, recipe, "--size-mib", str(size // MiB)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{recipe} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def median(results: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="output size (to_numpy)")
    parser.add_argument("--from-size-mib", type=int, default=256, help="array size (from_numpy)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=["to", "from"], default=None)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "RECIPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, recipe = args.child
        fn = child_to_numpy if mode == "to" else child_from_numpy
        print(json.dumps(fn(recipe, args.size_mib * MiB)))
        return

    if args.only in (None, "to"):
        size = args.size_mib * MiB
        results: dict[str, list[dict]] = {r: [] for r in TO_NUMPY_RECIPES}
        for _ in range(args.repeats):
            for recipe in TO_NUMPY_RECIPES:  # interleaved
                results[recipe].append(run_child("to", recipe, size))
        print(f"\n### to_numpy, {args.size_mib} MiB float32 output, median of {args.repeats}\n")
        print(
            f"Batches: {BATCH_ROWS} x {ROW_FLOATS} float32 (1 MiB, made by tf.fill in a map); "
            f"elements: {ELEMENT_FLOATS} float32 (64 KiB). Baseline RSS (TF imported, dataset "
            f"built, one element pulled): {median(results['to_numpy'], 'baseline') / MiB:.0f} MiB"
            ", subtracted.\n"
        )
        print(
            row(
                "recipe",
                "dataset",
                "time (s)",
                "CPU (s)",
                "peak extra RSS",
                "RSS / output",
                "to_numpy faster by",
            )
        )
        print("|---|---|---|---|---|---|---|")
        reference = {"batched": "to_numpy", "batched_unknown": "to_numpy", "unbatched": "to_numpy"}
        reference["unbatched"] = "to_numpy_rows"
        for recipe, (kind, text) in TO_NUMPY_RECIPES.items():
            rs = results[recipe]
            wall, out = median(rs, "wall"), median(rs, "out_bytes")
            ours = median(results[reference[kind]], "wall")
            ratio = median(rs, "extra") / out
            print(
                f"| `{text}` | {kind} | {wall:.2f} | {median(rs, 'cpu'):.2f} | "
                f"{median(rs, 'extra') / MiB:.0f} MiB | {ratio:.2f} | {wall / ours:.2f}x |"
            )
        print("\n(faster by: this recipe's time / fastbridge.to_numpy's time on the same dataset)")

    if args.only in (None, "from"):
        size = args.from_size_mib * MiB
        fresults: dict[str, list[dict]] = {r: [] for r in FROM_NUMPY_RECIPES}
        for _ in range(args.repeats):
            for recipe in FROM_NUMPY_RECIPES:
                fresults[recipe].append(run_child("from", recipe, size))
        print(
            f"\n### from_numpy, {args.from_size_mib} MiB float32 array, median of {args.repeats}\n"
        )
        print(
            row(
                "recipe",
                "start-up to first batch",
                "RSS added by start-up",
                "full epoch",
                "peak extra RSS",
            )
        )
        print("|---|---|---|---|---|")
        for recipe, text in FROM_NUMPY_RECIPES.items():
            rs = fresults[recipe]
            print(
                f"| `{text}` | {median(rs, 'startup') * 1e3:.0f} ms | "
                f"{median(rs, 'startup_extra') / MiB:.0f} MiB | {median(rs, 'epoch'):.2f} s | "
                f"{median(rs, 'extra') / MiB:.0f} MiB |"
            )


if __name__ == "__main__":
    main()
