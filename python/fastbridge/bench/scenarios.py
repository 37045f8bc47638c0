"""Where the scenarios' building blocks used to live, kept so their names still import from here.

Each has its own module now: ``batches`` (synthetic batches and datasets), ``step`` (the
calibrated jitted step), ``resources`` (RSS and page faults), ``loop`` (one measured run of a
handoff), ``copies`` (memcpy and ring slot fills), ``e2e`` (the end-to-end scenario) and
``accelerator`` (host-to-device GB/s).
"""

from __future__ import annotations

from .accelerator import gpu_devices, host_to_device
from .batches import (
    DICT_SHARES,
    LAYOUTS,
    ROWS,
    KiB,
    MiB,
    batch_nbytes,
    make_batch,
    repeated_dataset,
    tf_module,
)
from .copies import ParallelCopy, copy_rates
from .e2e import E2E_CLASSES, E2E_IMAGE, e2e_dataset, measure_e2e, mlp_step
from .loop import measure
from .resources import RssSampler, minor_faults, peak_rss_bytes, rss_bytes
from .step import (
    STATE,
    Step,
    batch_sharding,
    calibrate_step,
    initial_state,
    sharded_step,
    time_step,
)

__all__ = [
    "DICT_SHARES",
    "E2E_CLASSES",
    "E2E_IMAGE",
    "LAYOUTS",
    "ROWS",
    "STATE",
    "KiB",
    "MiB",
    "ParallelCopy",
    "RssSampler",
    "Step",
    "batch_nbytes",
    "batch_sharding",
    "calibrate_step",
    "copy_rates",
    "e2e_dataset",
    "gpu_devices",
    "host_to_device",
    "initial_state",
    "make_batch",
    "measure",
    "measure_e2e",
    "minor_faults",
    "mlp_step",
    "peak_rss_bytes",
    "repeated_dataset",
    "rss_bytes",
    "sharded_step",
    "tf_module",
    "time_step",
]
