"""The device the check measures, the transfer routes it offers, and the facts of the machine
(the bench's :func:`~fastbridge.bench.report.machine_info`, with the GPU's own)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from typing import Any

import fastbridge
import jax
from fastbridge._transfer import ENVIRONMENT as ROUTE_ENV
from fastbridge._transfer import ROUTES, probe
from fastbridge.bench.report import machine_info
from fastbridge.bench.scenarios import gpu_devices

__all__ = ["ROUTES", "ROUTE_ENV", "available_routes", "environment", "pick_device"]


def pick_device(dry: bool) -> jax.Device:
    """JAX's first GPU, or its CPU in a dry run; ``SystemExit`` when it sees no GPU."""
    if dry:
        return jax.devices("cpu")[0]
    gpus = gpu_devices()
    if not gpus:
        seen = ", ".join(str(d) for d in jax.devices())
        raise SystemExit(
            f"JAX sees no GPU (devices: {seen}); run with --dry on a machine without one"
        )
    return gpus[0]


def available_routes(device: jax.Device) -> tuple[list[str], str]:
    """The transfer routes the running JAX offers for ``device``, and how that was found:
    fastbridge's own probe, else (when the probe fails) a guess from JAX's API."""
    try:
        return list(probe(device).routes()), "fastbridge._transfer.probe"
    except Exception as error:
        reason = f"guessed from JAX's API (the fastbridge probe failed: {error!r})"
    if device.platform == "cpu":
        return ["cpu", "device_put"], reason
    found = []
    if hasattr(getattr(device, "client", None), "dma_map"):
        found.append("dma_map")
    try:
        if "pinned_host" in [m.kind for m in device.addressable_memories()]:
            found.append("pinned_host")
    except Exception:
        pass
    return [*found, "register", "device_put"], reason


def first_installed(*names: str) -> str | None:
    """``"name version"`` of the first of ``names`` installed, or ``None``.

    >>> first_installed("no-such-distribution") is None
    True
    """
    for name in names:
        try:
            return f"{name} {importlib.metadata.version(name)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def environment(device: jax.Device | None) -> dict[str, Any]:
    """Versions and machine facts (``device`` is ``None`` when no GPU was found)."""
    machine = machine_info()
    versions = machine["versions"]
    found: dict[str, Any] = {
        "python": machine["python"],
        "jax": jax.__version__,
        "jaxlib": versions["jaxlib"],
        "jax_plugin": first_installed(
            "jax-cuda13-plugin", "jax-cuda13-pjrt", "jax-cuda12-plugin", "jax-cuda12-pjrt"
        ),
        "numpy": versions["numpy"],
        "fastbridge": versions["fastbridge"],
        "fastbridge_file": fastbridge.__file__,
        "core_available": machine["core_available"],
        "cupy": first_installed("cupy-cuda13x", "cupy-cuda12x", "cupy"),
        "torch": first_installed("torch"),
        "jax_devices": [str(d) for d in jax.devices()],
        "cpu_count": machine["cores"],
        "cpu_affinity": machine["usable_cores"],
        "machine": platform.machine(),
        ROUTE_ENV: os.environ.get(ROUTE_ENV),
        "XLA_PYTHON_CLIENT_PREALLOCATE": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"),
    }
    if device is None:
        return found
    try:
        memories = [m.kind for m in device.addressable_memories()]
    except Exception as error:
        memories = [f"unknown: {error!r}"]
    found.update(
        platform=device.platform,
        device=str(device),
        device_kind=device.device_kind,
        memory_kinds=memories,
        client_dma_map=hasattr(getattr(device, "client", None), "dma_map"),
    )
    return found
