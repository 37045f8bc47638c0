"""Accelerator mode: host-to-device GB/s of the ring, the NumPy ring and a plain
``device_put`` loop."""

from __future__ import annotations

import time

import jax
import numpy as np


def gpu_devices() -> list[jax.Device]:
    try:
        return list(jax.devices("gpu"))
    except RuntimeError:
        return []


def host_to_device(
    device: jax.Device, nbytes: int, batches: int, repeats: int
) -> dict[str, list[float]]:
    """Host-to-device GB/s: pinned ring slots, the pageable NumPy ring, and ``device_put`` of a
    fresh NumPy array each batch (what a plain loop does)."""
    source = np.ones(nbytes // 4, np.float32)
    data = [source] * batches
    out: dict[str, list[float]] = {"ring (pinned)": [], "numpy ring (pageable)": []}
    out["device_put fresh array"] = []
    from .. import core_available, stream

    for _ in range(repeats):
        for name in list(out):
            if name == "ring (pinned)" and not core_available():
                continue
            started = time.perf_counter()
            if name == "device_put fresh array":
                for leaf in data:
                    jax.device_put(np.array(leaf), device).block_until_ready()
            else:
                backend = "ring" if name.startswith("ring") else "numpy"
                with stream(data, backend=backend, device=device) as batches_:  # type: ignore[arg-type]
                    for batch in batches_:
                        batch.block_until_ready()
            out[name].append(nbytes * batches / (time.perf_counter() - started) / 1e9)
    return {k: v for k, v in out.items() if v}
