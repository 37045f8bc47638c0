"""One transfer per batch against one ``device_put`` per leaf, for an 8-leaf batch.

Interleaved rounds, median of each: (a) ``jax.device_put`` of each leaf on its own, (b) one
``jax.device_put`` of the list of leaves, (c) fastbridge's path: the leaves back to back in one
buffer, one ``device_put`` of it, split into leaves on the device by the cached jitted split.
Every timing ends with ``block_until_ready`` on the results. On CPU, ``device_put`` of a NumPy
array may alias it, so (a) and (b) can be nearly free there; the comparison that matters is on
an accelerator.

    python benches/gpu/split_cost.py [--device gpu] [--mib 1 16] [--rounds 15] [--out x.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import jax
import numpy as np
from fastbridge._transfer import splitter

LEAVES = 8


def _leaves(total: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    each = total // LEAVES // 4
    return [rng.standard_normal(each).astype(np.float32) for _ in range(LEAVES)]


def _packed(leaves: list[np.ndarray]) -> tuple[np.ndarray, Any]:
    buffer = np.concatenate([leaf.view(np.uint8) for leaf in leaves])
    offsets = np.cumsum([0] + [leaf.nbytes for leaf in leaves[:-1]])
    layout = tuple(
        (int(o), leaf.shape, leaf.dtype) for o, leaf in zip(offsets, leaves, strict=True)
    )
    return buffer, layout


def _time(fn: Any) -> float:
    started = time.perf_counter()
    jax.block_until_ready(fn())  # type: ignore[no-untyped-call]
    return time.perf_counter() - started


def measure(device: jax.Device, total: int, rounds: int) -> dict[str, float]:
    leaves = _leaves(total)
    buffer, layout = _packed(leaves)
    split = splitter(layout)
    cases = {
        "per_leaf_device_put": lambda: [jax.device_put(leaf, device) for leaf in leaves],
        "list_device_put": lambda: jax.device_put(leaves, device),
        "one_transfer_split": lambda: split(jax.device_put(buffer, device)),
    }
    for fn in cases.values():  # compile and warm up
        _time(fn)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            times[name].append(_time(fn))
    got = split(jax.device_put(buffer, device))
    assert all(np.array_equal(np.asarray(a), b) for a, b in zip(got, leaves, strict=True))
    return {name: statistics.median(values) * 1e6 for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="platform (default: JAX's default)")
    parser.add_argument("--mib", type=float, nargs="+", default=[1, 16])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = jax.devices(args.device)[0] if args.device else jax.devices()[0]
    rows = []
    for mib in args.mib:
        micros = measure(device, int(mib * 2**20), args.rounds)
        rows.append({"mib": mib, **micros})
        ratio = micros["one_transfer_split"] / micros["per_leaf_device_put"]
        print(
            f"{device.platform} {mib:g} MiB, {LEAVES} leaves: per-leaf device_put "
            f"{micros['per_leaf_device_put']:.0f} µs, list device_put "
            f"{micros['list_device_put']:.0f} µs, one transfer + split "
            f"{micros['one_transfer_split']:.0f} µs ({ratio:.2f}x per-leaf)"
        )
    if args.out:
        with open(args.out, "w") as file:
            json.dump({"device": str(device), "jax": jax.__version__, "rows": rows}, file, indent=1)


if __name__ == "__main__":
    main()
