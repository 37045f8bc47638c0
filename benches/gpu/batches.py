"""The correctness pass's batches: several dtypes, every byte a function of the batch's index,
so any delivered batch can be checked against its source, on the host or on the device.

    >>> batch = make_batch(3, rows=2)
    >>> int(batch["index"][0]), same_bits(batch["u8"], make_batch(3, rows=2)["u8"])
    (3, True)
    >>> host_checksums(batch) == [int(s) for s in device_checks(batch)[1]]
    True
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from samples import Array


def bfloat16() -> np.dtype[Any] | None:
    try:
        dtype: np.dtype[Any] = np.dtype(jnp.bfloat16)
    except Exception:
        return None
    return dtype


def _bits(index: int, salt: int, nbytes: int) -> Array:
    """``nbytes`` pseudo-random bytes that depend only on ``(index, salt)`` (splitmix64)."""
    x = np.arange((nbytes + 7) // 8, dtype=np.uint64)
    x += np.uint64((index * 0x9E3779B97F4A7C15 + salt * 0xD1B54A32D192ED03) % (1 << 64))
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x.view(np.uint8)[:nbytes]


def make_batch(index: int, rows: int) -> dict[str, Array]:
    """Batch ``index``: several leaves of distinct dtypes, every byte a function of ``index``."""
    f32 = (_bits(index, 1, rows * 64 * 4).view(np.uint32) >> np.uint32(8)).astype(np.float32)
    batch: dict[str, Array] = {
        "index": np.array([index], np.int32),
        "f32": (f32 * np.float32(2**-24) + np.float32(index)).reshape(rows, 64),
        "i32": _bits(index, 2, rows * 16 * 4).view(np.int32).reshape(rows, 16),
        "u8": _bits(index, 3, rows * 256).reshape(rows, 256).copy(),
        "mask": (_bits(index, 5, rows * 8) & np.uint8(1)).astype(np.bool_).reshape(rows, 8),
    }
    bf16 = bfloat16()
    if bf16 is not None:
        small = (_bits(index, 4, rows * 32 * 2).view(np.uint16) >> np.uint16(4)).astype(np.float32)
        batch["bf16"] = small.astype(bf16).reshape(rows, 32)
    return batch


def host_words(leaf: Array) -> Array:
    flat = np.ascontiguousarray(leaf).reshape(-1)
    if flat.dtype.itemsize == 4:
        return flat.view(np.uint32)
    if flat.dtype.itemsize == 2:
        return flat.view(np.uint16).astype(np.uint32)
    return flat.view(np.uint8).astype(np.uint32)


def host_checksums(batch: dict[str, Array]) -> list[int]:
    """Position-weighted sums of every leaf's words, mod 2**32 (as :func:`device_checks`)."""
    sums = []
    for leaf in jax.tree_util.tree_leaves(batch):
        words = host_words(leaf)
        weights = np.arange(words.size, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
        sums.append(int(np.sum(words * weights, dtype=np.uint32)))
    return sums


def same_bits(got: Array, want: Array) -> bool:
    return got.dtype == want.dtype and got.shape == want.shape and got.tobytes() == want.tobytes()


def _device_words(x: jax.Array) -> jax.Array:
    flat = x.reshape(-1)
    if flat.dtype.itemsize == 4:
        return jax.lax.bitcast_convert_type(flat, jnp.uint32)
    if flat.dtype.itemsize == 2:
        return jax.lax.bitcast_convert_type(flat, jnp.uint16).astype(jnp.uint32)
    return flat.astype(jnp.uint32)


@jax.jit
def device_checks(batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """The batch's index and its checksums, computed on the device (no host sync)."""
    sums = []
    for leaf in jax.tree_util.tree_leaves(batch):
        words = _device_words(leaf)
        weights = jnp.arange(words.size, dtype=jnp.uint32) * jnp.uint32(2) + jnp.uint32(1)
        sums.append(jnp.sum(words * weights, dtype=jnp.uint32))
    return batch["index"][0], jnp.stack(sums)


def _bump(batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """A step whose outputs match its inputs' shapes, so a donated batch's buffers are reused."""
    out = {}
    for key, x in batch.items():
        if x.dtype == jnp.bool_:
            out[key] = jnp.logical_not(x)
        elif jnp.issubdtype(x.dtype, jnp.floating):
            out[key] = x * 2
        else:
            out[key] = x + 1
    return out


donated_step = jax.jit(_bump, donate_argnums=0)
plain_step = jax.jit(_bump)
