"""Host arrays to ``jax.Array`` at JAX's own per-array cost.

``jax.device_put`` spends most of its time per leaf in Python (pytree handling, dispatch,
checks on the target) before XLA's C++ makes the buffer: about 25 to 35 µs per leaf on a
2-core CPU, against about 5 µs for the C++ part. A stream knows every leaf's shape, dtype and
placement before the batch arrives (``_plan``), so it calls the C++ entry that ``device_put``
itself ends in, ``batched_device_put``, directly. Host memory is treated exactly as
``device_put`` treats a NumPy array: on CPU a 64-byte-aligned array is aliased (JAX holds the
array until the last buffer using it is gone), anything else is copied or transferred, and JAX
holds the array until the transfer no longer needs it.

That entry is internal to JAX. It is checked once per device by :func:`putter`, which puts a
small array and reads it back; where it is missing or answers differently, the public
``jax.device_put`` path runs instead, with the same results at the public path's cost.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

Putter = Callable[[list[np.ndarray]], jax.Array]
"""Makes one ``jax.Array`` from host arrays, one per device (the shards, in device order)."""


def putter(
    shape: tuple[int, ...],
    dtype: np.dtype,
    sharding: jax.sharding.Sharding,
    devices: Sequence[jax.Device],
    *,
    x64: bool,
    copy: bool = False,
) -> Putter:
    """A function that makes a ``jax.Array`` of global ``shape`` and ``dtype`` placed by
    ``sharding`` from host arrays, one per entry of ``devices`` (the same array may serve
    several devices). ``copy`` forbids aliasing host memory on CPU.

    >>> import jax, numpy as np
    >>> device = jax.devices()[0]
    >>> put = putter((2,), np.dtype("float32"), jax.sharding.SingleDeviceSharding(device),
    ...              [device], x64=False)
    >>> put([np.array([1.0, 2.0], np.float32)]).tolist()
    [1.0, 2.0]
    """
    return _putter(tuple(shape), np.dtype(dtype), sharding, tuple(devices), x64, copy)


@functools.lru_cache(maxsize=256)
def _putter(
    shape: tuple[int, ...],
    dtype: np.dtype,
    sharding: jax.sharding.Sharding,
    placed: tuple[jax.Device, ...],
    x64: bool,
    copy: bool,
) -> Putter:
    # Cached (as are the planner's): putters are small, and making one costs an aval.
    devices = list(placed)
    batched = _batched_device_put(devices[0])
    if batched is not None:
        aval = _shaped_array(shape, dtype)
        if copy and len(devices) > 1:
            # JAX's entry cannot force a copy onto several devices (it fails with
            # "bad_function_call" in jaxlib 0.10 and 0.12): copy first, then put the copies.
            def fast_copies(hosts: list[np.ndarray]) -> jax.Array:
                copies = [np.array(host) for host in hosts]
                return batched(aval, sharding, copies, devices, True, False, enable_x64=x64)  # type: ignore[no-any-return]

            return fast_copies

        def fast(hosts: list[np.ndarray]) -> jax.Array:
            return batched(aval, sharding, hosts, devices, True, copy, enable_x64=x64)  # type: ignore[no-any-return]

        return fast

    def public(hosts: list[np.ndarray]) -> jax.Array:
        shards: list[jax.Array] = [
            jax.device_put(host, device, may_alias=not copy)
            for host, device in zip(hosts, devices, strict=True)
        ]
        if isinstance(sharding, jax.sharding.SingleDeviceSharding):
            return shards[0]
        return jax.make_array_from_single_device_arrays(shape, sharding, shards)

    return public


def put_bytes(host: np.ndarray, device: jax.Device, *, copy: bool = False) -> jax.Array:
    """A 1-D ``uint8`` host array as one ``jax.Array`` on ``device`` (a slot's bytes for one
    device, on the transfer route); ``copy`` as for :func:`putter`."""
    return _byte_putter(host.shape[0], device, copy)([host])


@functools.lru_cache(maxsize=64)
def _byte_putter(nbytes: int, device: jax.Device, copy: bool) -> Putter:
    sharding = jax.sharding.SingleDeviceSharding(device)
    return putter((nbytes,), np.dtype(np.uint8), sharding, [device], x64=False, copy=copy)


def release_host_arrays() -> None:
    """Let JAX drop the host arrays it has finished with now.

    JAX releases a host array it no longer needs (the buffer aliasing it was deleted, or its
    transfer completed) only at its next call that collects such releases, or at a garbage
    collection: until then the array, and the slot it views, stay referenced. The stream asks
    before it waits for a slot or a batch, so a slot whose batch is gone is free at once.
    """
    _collect_garbage()


def fast_path(device: jax.Device) -> bool:
    """Whether arrays for ``device`` are made through JAX's C++ entry (else ``device_put``)."""
    return _batched_device_put(device) is not None


@functools.cache
def _batched_device_put(device: jax.Device) -> Callable[..., Any] | None:
    """JAX's ``batched_device_put``, if it is there and puts a probe array on ``device``
    correctly; ``None`` otherwise. Asked once per device and process."""
    try:
        batched = importlib.import_module("jax._src.lib").xla_client.batched_device_put
        probe = np.arange(16, dtype=np.float32)
        sharding = jax.sharding.SingleDeviceSharding(device)
        aval = _shaped_array(probe.shape, probe.dtype)
        array = batched(aval, sharding, [probe], [device], True, True, enable_x64=False)
        good = (
            isinstance(array, jax.Array)
            and array.shape == probe.shape
            and array.dtype == probe.dtype
            and array.devices() == {device}
            and bool(np.array_equal(np.asarray(array), probe))
        )
    except Exception:  # an internal API that moved or changed: use the public path
        return None
    return batched if good else None


def _collect_garbage() -> None:
    collect = _collector()
    if collect is not None:
        collect()


@functools.cache
def _collector() -> Callable[[], None] | None:
    """JAX's ``collect_garbage`` (the releases it deferred), or ``None`` where it moved: then
    releases wait for JAX's next call or a garbage collection, which is slower, not wrong."""
    try:
        collect: Callable[[], None] = importlib.import_module("jax._src.lib")._jax.collect_garbage
        collect()
    except Exception:
        return None
    return collect


def _shaped_array(shape: tuple[int, ...], dtype: np.dtype) -> Any:
    return _aval_type()(tuple(shape), np.dtype(dtype))


@functools.cache
def _aval_type() -> Any:
    return importlib.import_module("jax._src.core").ShapedArray
