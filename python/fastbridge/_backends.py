"""The backends: how one batch becomes a pytree of ``jax.Array``, and who does the work.

A backend owns its ready queue, its converter and its slots (if any). The producer thread
calls ``prepare`` on every batch it reads and publishes the result on ``queue``; the consumer
takes it and calls ``deliver``. Every converter runs on the producer thread except ``copy``'s,
the consumer-side baseline, so JAX's per-leaf import cost never lands on the consumer.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Literal

import jax

from ._handoff import Converter, CopyConverter
from ._leaves import CAST, COPY, Flattener, LeafSpec
from ._native import core as _core
from ._placement import Placement
from ._plan import DIRECT, NARROW, SLOT, Planner
from ._transfer import Route, choose_route, forced_route, probe, registers_with_cuda
from .errors import warn

if TYPE_CHECKING:
    from ._options import StreamOptions
    from ._tfdata import PipelineFacts

BackendName = Literal["auto", "ring", "numpy", "direct", "copy"]
"""The ``backend=`` values of ``stream()``."""
BACKENDS: tuple[BackendName, ...] = ("auto", "ring", "numpy", "direct", "copy")


class Engine:
    """What one backend runs on: a ready queue, a converter, and slots where it copies into
    slots (one per producer run; ``backend`` names, elsewhere, are the ``backend=`` strings).

    ``prepare(item, index)`` runs on the producer thread and returns ``(payload, nbytes)``;
    ``deliver(payload)`` runs on the consumer and returns the batch. ``pool`` is the slot pool
    (``None`` when the backend copies nothing into slots). ``numpy_items`` says whether a
    tf.data source is read as NumPy (``as_numpy_iterator()``) or as tensors.
    """

    def __init__(
        self,
        name: str,
        queue: Any,
        pool: Any,
        converter: Any,
        *,
        numpy_items: bool = True,
        route: Route | None = None,
    ) -> None:
        self.name = name
        self.numpy_items = numpy_items
        self.route = route
        """How slot memory reaches the device (``_transfer``); ``None`` without slots."""
        self.queue = queue
        self.pool = pool
        self.converter = converter
        self._final_stats: dict[str, Any] | None = None

    def prepare(self, item: Any, index: int) -> tuple[Any, int]:
        return self.converter(item, index)  # type: ignore[no-any-return]

    def deliver(self, payload: Any) -> Any:
        return payload

    @property
    def acquire_seconds(self) -> float:
        """Producer time spent waiting for a free slot (the consumer held them all)."""
        return float(getattr(self.converter, "acquire_seconds", 0.0))

    def pool_stats(self) -> dict[str, Any]:
        """The slot pool's counters (empty without one; frozen at close)."""
        if self._final_stats is not None:
            return self._final_stats
        if self.pool is None:
            return {}
        stats = dict(self.pool.stats())
        slots = self._slot_converter()
        if slots is not None and slots.dma_maps is not None:
            stats["dma_mapped_slots"] = len(slots.dma_maps)
        return stats

    def stats(self, delivered_bytes: int) -> dict[str, Any]:
        """The ``StreamStats`` fields the engine owns: its slots, what it copied and how slot
        memory reaches the device (``delivered_bytes``: what the consumer received)."""
        pool = self.pool_stats()
        slots = pool.get("slots", 0)
        pool_bytes = pool.get("pool_bytes", 0)
        pinned = pool_bytes > 0 and (
            pool.get("locked_bytes", 0) >= pool_bytes
            or pool.get("cuda_slots", 0) >= slots
            or pool.get("dma_mapped_slots", 0) >= slots
        )
        return {
            "bytes_copied": delivered_bytes
            if self.consumer_copies()
            else pool.get("bytes_copied", 0),
            "pinned": pinned,
            "slots": slots,
            "pool_bytes": pool_bytes,
            "pool_grown": pool.get("pool_grown", 0),
            "transfer_route": self.route,
        }

    def _slot_converter(self) -> Converter | None:
        """The converter that fills this backend's slots (``None`` for ``copy``)."""
        return self.converter if isinstance(self.converter, Converter) else None

    def consumer_copies(self) -> bool:
        return False

    def close(self) -> None:
        if self._final_stats is None:
            # Stats after the end describe the pool as it was, not the freed one.
            self._final_stats = self.pool_stats()
        self.queue.close()
        slots = self._slot_converter()
        try:
            if slots is not None:
                slots.close()  # transfers finish before their slots are freed
        finally:
            if self.pool is not None:
                self.pool.close()


class CopyEngine(Engine):
    """``copy``: the producer only reads; ``jnp.array`` of every leaf runs on the consumer."""

    def prepare(self, item: Any, index: int) -> tuple[Any, int]:
        return (item, index), 0

    def deliver(self, payload: Any) -> Any:
        item, index = payload
        # The x64 setting the stream was made under, as the producer thread uses elsewhere.
        with jax.enable_x64(self.converter.flatten.x64):
            batch, _ = self.converter(item, index)
        return batch

    def consumer_copies(self) -> bool:
        return True


def choose(name: BackendName, device: jax.Device, facts: PipelineFacts | None) -> BackendName:
    """``name`` with ``auto`` resolved; ``facts`` describe a tf.data source (else ``None``)."""
    if name == "auto":
        # On CPU, TensorFlow's own buffers need no copy and any extra copy competes with the
        # step for cores and memory bandwidth (benches/RESULTS.md). A buffer TensorFlow made
        # is never written again while referenced; but TensorFlow aliases 64-byte-aligned
        # arrays that Python code in the pipeline returns (from_generator, py_function,
        # numpy_function), and any other iterable may refill the arrays it yielded, so
        # batches the consumer holds could change: those get their own copy in slots. On
        # accelerators, pinned slots feed asynchronous transfers.
        if device.platform == "cpu" and facts is not None and not facts.runs_python:
            return "direct"
        return "ring" if _core is not None else "numpy"
    if name == "ring" and _core is None:
        raise ImportError(
            "backend='ring' needs the Rust extension fastbridge._core, which is not built; "
            "install a fastbridge wheel, or use backend='numpy'"
        )
    if name == "direct" and facts is not None and facts.runs_python:
        warn(
            "backend='direct' hands TensorFlow's buffers to JAX, and this pipeline runs "
            f"Python code ({', '.join(facts.python_ops) or 'from_generator'}) whose arrays "
            "TensorFlow aliases when they are 64-byte aligned: if that code refills an array "
            "it returned, batches you hold change. Use backend='auto' (which copies such "
            "batches into slots), or make the Python code return a new array each time",
        )
    return name


def make_engine(
    name: BackendName, placement: Placement, flatten: Flattener, options: StreamOptions
) -> Engine:
    """The backend ``name`` (already resolved from ``auto`` by :func:`choose`)."""
    from ._numpy_queue import NumpyQueue
    from ._numpy_ring import NumpyLayout, NumpySlotPool

    core: Any = _core if name != "numpy" else None  # the NumPy twins when None
    queue: Any = core.ReadyQueue(options.prefetch) if core else NumpyQueue(options.prefetch)
    if name == "copy":
        return CopyEngine(name, queue, None, CopyConverter(placement, flatten))
    if name not in ("ring", "numpy", "direct"):
        raise ValueError(f"unknown backend {name!r}")
    platform = placement.device.platform
    capabilities = probe(placement.device)
    if core is None:  # NumPy slots cannot be pinned with CUDA
        capabilities = dataclasses.replace(capabilities, cuda_host_import=False, cuda_driver=False)
    route = choose_route(capabilities, pin_memory=options.pin_memory, forced=forced_route())
    if name == "direct" and core is None:
        pool = None  # NumPy narrows into fresh memory
    else:
        settings = dict(
            slots=options.slots_or_default,
            max_bytes=options.max_pool_bytes,
            lock=options.pin_memory,
            cuda=registers_with_cuda(route),
            copy_threads=options.copy_threads_for(platform),
            queue=queue,
        )
        # direct takes slots only for leaves that must be narrowed; the pool allocates them on
        # first use, so a batch that aliases its source takes none.
        pool = core.SlotPool(**settings) if core else NumpySlotPool(**settings)

    def leaf_route(spec: LeafSpec) -> str:
        if name != "direct" or spec.conversion in (COPY, CAST):
            return SLOT if name != "direct" else DIRECT
        return SLOT if pool is not None else NARROW

    transfer = route != "cpu"
    planner = Planner(
        flatten,
        placement,
        route=leaf_route,
        make_layout=(core.Layout if core else NumpyLayout) if pool is not None else None,
        transfer=transfer,
        # On CPU devices the transfer route (forced, for tests) copies where a GPU would
        # move the bytes, so slots come back as soon as the copy is made.
        copy=transfer and platform == "cpu",
    )
    # Transfers in flight hold their slots: at most prefetch of them, and always one slot
    # fewer than the pool has, so the producer finds a slot to fill without the pool
    # growing, and stays prefetch batches ahead.
    depth = min(options.prefetch, options.slots_or_default - 1)
    converter = Converter(planner, pool, route if pool is not None else "cpu", depth=depth)
    numpy_items = name != "direct"
    return Engine(
        name, queue, pool, converter, numpy_items=numpy_items, route=route if pool else None
    )
