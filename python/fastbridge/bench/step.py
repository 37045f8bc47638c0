"""The jitted step every batch goes through, calibrated to a chosen duration on this machine.

>>> step = calibrate_step(0.001)
>>> step(initial_state(), jnp.zeros((ROWS, 64), jnp.float32)).shape
(256, 256)
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .batches import ROWS

STATE = 256


@jax.jit
def _touch(leaves: list[jax.Array]) -> jax.Array:
    # Read a little of every leaf so the step depends on the batch (an import that silently
    # failed would show), without making the step's cost grow with the batch.
    total = jnp.float32(0)
    for leaf in leaves:
        flat = leaf.reshape(-1)
        total = total + flat[: min(flat.size, 1024)].astype(jnp.float32).sum()
    return total  # type: ignore[no-any-return]  # jnp arithmetic is typed as Any


def block(tree: Any) -> Any:
    """``jax.block_until_ready``, which jax leaves untyped."""
    return jax.block_until_ready(tree)  # type: ignore[no-untyped-call]


def _make_step(iterations: int) -> Callable[[jax.Array, Any], jax.Array]:
    weight = jnp.asarray(
        np.random.default_rng(1).standard_normal((STATE, STATE), dtype=np.float32) / 16
    )

    @jax.jit
    def step(state: jax.Array, batch: Any) -> jax.Array:
        leaves = [leaf for leaf in jax.tree_util.tree_leaves(batch) if isinstance(leaf, jax.Array)]
        x = state + 1e-9 * _touch(leaves)

        def body(_: int, x: jax.Array) -> jax.Array:
            return jnp.tanh(x @ weight)

        return jax.lax.fori_loop(0, iterations, body, x)  # type: ignore[no-any-return]

    return step


@dataclasses.dataclass
class Step:
    """A jitted CPU step of a calibrated duration: ``state = step(state, batch)``."""

    fn: Callable[[jax.Array, Any], jax.Array]
    iterations: int
    seconds: float
    """Median measured duration on a batch already in JAX."""

    def __call__(self, state: jax.Array, batch: Any) -> jax.Array:
        return self.fn(state, batch)


def sharded_step(base: Step) -> Step:
    """``base`` for batches sharded over several devices: the batch is read on every shard's own
    device, while the matmul chain runs on one device, as calibrated. (Run on the batch's
    devices, the chain would be replicated: 8 times the work on forced host devices that share
    the same cores.)"""
    probe = jnp.zeros((ROWS, 16), jnp.float32)

    def fn(state: jax.Array, batch: Any) -> jax.Array:
        leaves = [leaf for leaf in jax.tree_util.tree_leaves(batch) if isinstance(leaf, jax.Array)]
        touched = _touch(leaves)  # dispatched first, so it runs beside the chain
        state = base.fn(state, probe)
        touched.block_until_ready()
        return state

    return Step(fn, base.iterations, base.seconds)


def batch_sharding(devices: int) -> jax.sharding.NamedSharding:
    """``NamedSharding(Mesh(devices, ('batch',)), P('batch'))`` over the first ``devices``."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    found = jax.devices()
    if len(found) < devices:
        raise RuntimeError(
            f"the sharded scenario needs {devices} devices, JAX sees {len(found)} (on CPU set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={devices} before importing jax)"
        )
    spec = PartitionSpec("batch")  # type: ignore[no-untyped-call]  # jax leaves it untyped
    return NamedSharding(Mesh(np.array(found[:devices]), ("batch",)), spec)


def initial_state() -> jax.Array:
    return jnp.full((STATE, STATE), 0.01, jnp.float32)


def time_step(fn: Callable[[jax.Array, Any], jax.Array], batch: Any, runs: int = 15) -> float:
    state = initial_state()
    fn(state, batch).block_until_ready()  # compile
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        state = fn(state, batch)
        state.block_until_ready()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def calibrate_step(target_seconds: float) -> Step:
    """Choose the loop count so that one step takes about ``target_seconds`` on this machine."""
    probe = jnp.zeros((ROWS, 16), jnp.float32)
    iterations = 16
    fn = _make_step(iterations)
    seconds = time_step(fn, probe)
    # A few rounds: dispatch overhead skews the first estimate, and the machine is shared.
    for _ in range(4):
        if 0.85 * target_seconds <= seconds <= 1.15 * target_seconds:
            break
        iterations = max(1, round(iterations * target_seconds / max(seconds, 1e-7)))
        fn = _make_step(iterations)
        seconds = time_step(fn, probe)
    return Step(fn, iterations, seconds)
