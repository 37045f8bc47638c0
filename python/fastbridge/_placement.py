"""Where a stream's arrays go: one device, or the shards of a ``jax.sharding.Sharding``.

A sharding that splits only the batch axis gives each device a contiguous run of the batch's
rows (:meth:`Placement.row_blocks`), so every shard can be its own block of host memory and
alias it on CPU; any other sharding is placed by ``device_put``, which copies as it must.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

from ._multihost import global_shape
from .errors import ShardingError


class Placement:
    """Where a leaf's arrays go: one device, or the shards of a ``jax.sharding.Sharding``."""

    def __init__(self, device: jax.Device, sharding: jax.sharding.Sharding | None) -> None:
        self.device = device
        self.sharding = sharding
        self.target: jax.sharding.Sharding = (
            sharding if sharding is not None else jax.sharding.SingleDeviceSharding(device)
        )
        """The sharding every array gets (the device's own without ``sharding=``)."""

    def check(self, path: str, local_shape: tuple[int, ...]) -> None:
        """Raise ``ShardingError`` naming the leaf when the sharding cannot lay it out (asked
        once per batch shape: the stream's plans remember the answer)."""
        if self.sharding is None:
            return
        full = self.global_shape(local_shape)
        try:
            self.sharding.shard_shape(full)
        except Exception as error:
            raise _sharding_error(self.sharding, path, full, error) from None

    def global_shape(self, local_shape: tuple[int, ...]) -> tuple[int, ...]:
        if self.sharding is None:
            return local_shape
        return global_shape(self.sharding, local_shape)

    def row_blocks(self, shape: tuple[int, ...]) -> list[tuple[int, int, list[jax.Device]]]:
        """Local row ranges of a leaf and the local devices holding each, when the sharding
        splits only the leading (batch) axis; one block for the whole leaf without a sharding;
        none (meaning: place it with a copy) for any other sharding."""
        if self.sharding is None:
            return [(0, shape[0] if shape else 0, [self.device])]
        if not shape:
            return []  # a scalar has no batch axis to split: placed whole, as the sharding says
        full = self.global_shape(shape)
        blocks: dict[tuple[int, int], list[jax.Device]] = {}
        for device, found in self.sharding.addressable_devices_indices_map(full).items():
            index = found if found is not None else ()
            rows = index[0] if index else slice(None)
            rest = zip(index[1:], full[1:], strict=False)
            if any(s != slice(None) and s != slice(0, n) for s, n in rest):
                return []  # sharded beyond the batch axis: no aliasing layout
            start, stop, _ = rows.indices(full[0])
            blocks.setdefault((start, stop), []).append(device)
        # This process's rows are one contiguous run of the global batch (see _multihost).
        first = min(start for start, _ in blocks)
        if max(stop for _, stop in blocks) - first != shape[0]:
            return []
        return [
            (start - first, stop - first, devices)
            for (start, stop), devices in sorted(blocks.items())
        ]

    def assemble(self, local_shape: tuple[int, ...], arrays: list[jax.Array]) -> jax.Array:
        """A global array from per-device arrays that alias this process's slot blocks."""
        assert self.sharding is not None, "only sharded leaves are assembled"
        return jax.make_array_from_single_device_arrays(
            self.global_shape(local_shape), self.sharding, arrays
        )

    def place(self, arrays: list[Any]) -> list[jax.Array]:
        """Put whole host arrays where they belong (copies when a device or sharding needs it)."""
        if self.sharding is not None and not self.sharding.is_fully_addressable:
            return [
                jax.make_array_from_process_local_data(  # type: ignore[no-untyped-call]
                    self.sharding, np.asarray(a)
                )
                for a in arrays
            ]
        target = self.sharding if self.sharding is not None else self.device
        return jax.device_put(arrays, target)  # type: ignore[no-any-return]


def _sharding_error(
    sharding: jax.sharding.Sharding, path: str, shape: tuple[int, ...], error: Exception
) -> ShardingError:
    spec = getattr(sharding, "spec", None)
    mesh = getattr(sharding, "mesh", None)
    if spec is None or mesh is None:  # not a NamedSharding: JAX's own words
        return ShardingError(f"leaf {path} of shape {shape} does not fit sharding=: {error}", path)
    parts = []
    for entry in spec:
        names = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
        parts.append((names, math.prod(mesh.shape[n] for n in names)))
    split = [i for i, (_, n) in enumerate(parts) if n > 1]
    if split and len(shape) <= max(split):
        return ShardingError(
            f"leaf {path} has shape {shape}, but sharding={spec} splits axis {max(split)} over "
            f"{parts[max(split)][1]} devices: a leaf it splits needs that axis. Give the leaf "
            "a batch axis (e.g. repeat a per-batch scalar for every row), or pass a sharding "
            "that replicates it (PartitionSpec())",
            path,
        )
    for axis, (names, n) in enumerate(parts):
        if axis < len(shape) and shape[axis] % n:
            what = "rows" if axis == 0 else f"entries along axis {axis}"
            return ShardingError(
                f"leaf {path} has {shape[axis]} {what}, which sharding={spec} splits into {n} "
                f"parts ({', '.join(map(repr, names))}): use a batch size divisible by {n}, or "
                f"pad_last=True with batch_size= a multiple of {n} (a short last batch is then "
                "padded, and the mask marks the padding)",
                path,
            )
    message = f"leaf {path} of shape {shape} does not fit sharding={spec}: {error}"
    return ShardingError(message, path)
