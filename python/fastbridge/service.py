"""Remote preprocessing through the tf.data service.

When one host cannot produce batches fast enough, the tf.data service runs the dataset's
pipeline on worker machines and streams the elements back. :func:`distribute` validates the
arguments and applies ``tf.data.experimental.service.distribute``; :class:`LocalService` starts
a dispatcher and workers in this process, for tests, docs and single-machine experiments.

See :class:`LocalService` for a runnable example of both together.

TensorFlow is imported only when one of these is called, so ``import fastbridge`` stays cheap.
"""

from __future__ import annotations

import inspect
import os
import socket
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._checks import check_int
from ._options import service_target

if TYPE_CHECKING:
    import tensorflow as tf

PROCESSING_MODES: tuple[str, ...] = ("distributed_epoch", "parallel_epochs")
"""The processing modes :func:`distribute` accepts as strings (TensorFlow's
``ShardingPolicy`` members are accepted too).

- ``"distributed_epoch"``: the dispatcher hands out splits of the source dynamically; across
  all workers, every element is produced exactly once per epoch (order not deterministic).
- ``"parallel_epochs"``: every worker runs the whole dataset; each element arrives once per
  worker.
"""

_OWN_ARGUMENTS = frozenset({"processing_mode", "service", "job_name"})


def _tf() -> Any:
    import tensorflow as tf

    return tf


def _processing_mode(processing_mode: Any) -> Any:
    tf = _tf()
    policy = tf.data.experimental.service.ShardingPolicy
    if isinstance(processing_mode, policy):
        return processing_mode
    if isinstance(processing_mode, str) and processing_mode in PROCESSING_MODES:
        return processing_mode
    allowed = ", ".join(map(repr, PROCESSING_MODES))
    raise ValueError(
        f"processing_mode must be one of {allowed} (or a "
        f"tf.data.experimental.service.ShardingPolicy), got {processing_mode!r}"
    )


def distribute(
    ds: tf.data.Dataset,
    service: str | Any,
    *,
    processing_mode: str | Any = "distributed_epoch",
    job_name: str | None = None,
    **kwargs: Any,
) -> tf.data.Dataset:
    """Run ``ds`` on tf.data service workers and return the dataset of their output.

    ``service`` is the dispatcher's address, ``"grpc://host:port"`` or ``"host:port"`` (the
    protocol defaults to gRPC), or an object with a ``.target`` such as :class:`LocalService`.
    ``processing_mode`` is one of :data:`PROCESSING_MODES` or a ``ShardingPolicy``.
    ``job_name`` lets several consumers share one job (with ``"distributed_epoch"`` they then
    split one epoch between them). Other keyword arguments (``consumer_index``,
    ``num_consumers``, ``max_outstanding_requests``, ``compression``, ``target_workers``, ...)
    go to ``tf.data.experimental.service.distribute`` unchanged.

    Arguments are checked before anything contacts the dispatcher. Then, in eager mode,
    TensorFlow registers the dataset with the dispatcher right away: this call blocks (TF
    retries) until the dispatcher answers, so start the dispatcher first.

    The pipeline is serialized and sent to the workers: it must not contain Python code
    (``tf.py_function``, ``from_generator``). What is batched before ``distribute`` is
    batched on the workers: each worker makes its own batches, so with
    ``"distributed_epoch"`` up to one short batch per worker appears per epoch.

    >>> import tensorflow as tf
    >>> from fastbridge import stream
    >>> ds = tf.data.Dataset.range(8).batch(4)
    >>> distribute(ds, "localhost")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: service must be a dispatcher address 'grpc://host:port' or 'host:port' ...
    >>> with LocalService(num_workers=2) as service:  # doctest: +SKIP
    ...     remote = distribute(ds, service.target, processing_mode="parallel_epochs")
    ...     with stream(remote, backend="numpy") as batches:
    ...         sorted(int(x) for batch in batches for x in batch)
    [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7]
    """
    tf = _tf()
    if not isinstance(ds, tf.data.Dataset):
        raise TypeError(f"ds must be a tf.data.Dataset, got {type(ds).__name__}")
    target = service_target(service)
    mode = _processing_mode(processing_mode)
    if job_name is not None and (not isinstance(job_name, str) or not job_name):
        raise ValueError(f"job_name must be None or a non-empty string, got {job_name!r}")
    accepted = inspect.signature(tf.data.experimental.service.distribute).parameters
    unknown = sorted(set(kwargs) - (set(accepted) - _OWN_ARGUMENTS))
    if unknown:
        allowed = ", ".join(sorted(set(accepted) - _OWN_ARGUMENTS))
        raise TypeError(
            f"distribute() got unexpected keyword argument(s) {', '.join(unknown)}; "
            f"tf.data.experimental.service.distribute accepts {allowed}"
        )
    return ds.apply(
        tf.data.experimental.service.distribute(
            processing_mode=mode, service=target, job_name=job_name, **kwargs
        )
    )


def _loopback_only() -> bool:
    """Whether every network interface of this network namespace is a loopback interface."""
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        return False
    for name in names:
        try:
            with open(f"/sys/class/net/{name}/flags") as file:
                if not int(file.read().strip(), 16) & 0x8:  # IFF_LOOPBACK
                    return False
        except (OSError, ValueError):
            if name not in ("lo", "lo0"):
                return False
    return bool(names)


class LocalService:
    """A tf.data service dispatcher and ``num_workers`` workers in this process, on localhost.

    Ports are chosen by the operating system (port 0); clients and workers are given only
    ``localhost`` addresses. ``target`` (``"grpc://localhost:PORT"``) is what
    :func:`distribute` and ``stream(ds, service=...)`` take. Leaving the ``with`` block stops
    the workers, then the dispatcher. Close the streams that read from the service first: a
    client whose workers are gone keeps retrying instead of ending.

    TensorFlow's servers cannot be told which address to bind: they listen on every interface
    (``0.0.0.0``), whatever address they advertise. So that a test or an experiment never
    exposes ports by accident, ``LocalService`` refuses to start when this network namespace
    has any interface besides loopback, unless ``allow_all_interfaces=True``. Run it in a
    private network namespace, where only loopback exists::

        unshare --user --map-root-user --net sh -c 'ip link set lo up && exec python train.py'

    or pass ``allow_all_interfaces=True`` on a machine whose firewall keeps the ports private.

    >>> import tensorflow as tf
    >>> from fastbridge import stream
    >>> from fastbridge.service import LocalService, distribute
    >>> ds = tf.data.Dataset.range(8).batch(4)
    >>> with LocalService(num_workers=2) as service:  # doctest: +SKIP
    ...     with stream(distribute(ds, service.target), backend="numpy") as batches:
    ...         sorted(int(x) for batch in batches for x in batch)
    [0, 1, 2, 3, 4, 5, 6, 7]
    """

    def __init__(
        self,
        num_workers: int = 2,
        *,
        allow_all_interfaces: bool = False,
        fault_tolerant_mode: bool = False,
        work_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        # Any bad num_workers is a ValueError here, its type included, as it always was.
        check_int("num_workers", num_workers, 1, wrong_type=ValueError)
        if fault_tolerant_mode and work_dir is None:
            raise ValueError("fault_tolerant_mode=True needs a work_dir for the dispatcher journal")
        self.num_workers = num_workers
        self.allow_all_interfaces = allow_all_interfaces
        self.fault_tolerant_mode = fault_tolerant_mode
        self.work_dir = None if work_dir is None else os.fspath(work_dir)
        self._dispatcher: Any = None
        self._workers: list[Any] = []
        self._target: str | None = None

    @property
    def target(self) -> str:
        """The dispatcher's address, ``"grpc://localhost:PORT"``."""
        if self._target is None:
            raise RuntimeError("LocalService is not running: use it as a context manager")
        return self._target

    @property
    def dispatcher_address(self) -> str:
        """The dispatcher's address without the protocol, ``"localhost:PORT"``."""
        return self.target.split("://", 1)[1]

    @property
    def worker_addresses(self) -> list[str]:
        """The workers' addresses, ``"localhost:PORT"`` each."""
        return [worker._address for worker in self._workers]

    @property
    def running(self) -> bool:
        return self._target is not None

    def start(self) -> LocalService:
        """Start the dispatcher and the workers (``with`` calls this). Returns ``self``."""
        if self.running:
            return self
        if not self.allow_all_interfaces and not _loopback_only():
            raise RuntimeError(
                "LocalService: TensorFlow's tf.data service servers listen on every interface "
                "(0.0.0.0), and this machine has interfaces besides loopback "
                f"({', '.join(name for _, name in socket.if_nameindex())}). Run in a private "
                "network namespace (unshare --user --map-root-user --net, then "
                "'ip link set lo up'), or pass allow_all_interfaces=True if a firewall keeps "
                "the ports private."
            )
        service = _tf().data.experimental.service
        try:
            self._dispatcher = service.DispatchServer(
                service.DispatcherConfig(
                    port=0,
                    protocol="grpc",
                    work_dir=self.work_dir,
                    fault_tolerant_mode=self.fault_tolerant_mode,
                )
            )
            port = int(self._dispatcher.target.rsplit(":", 1)[1])
            dispatcher_address = f"localhost:{port}"
            for _ in range(self.num_workers):
                self._workers.append(
                    service.WorkerServer(
                        service.WorkerConfig(
                            dispatcher_address=dispatcher_address,
                            worker_address="localhost:%port%",
                            port=0,
                            protocol="grpc",
                        )
                    )
                )
        except BaseException:
            self.stop()
            raise
        self._target = f"grpc://{dispatcher_address}"
        return self

    def stop(self) -> None:
        """Stop the workers, then the dispatcher. Safe to call more than once."""
        workers, self._workers = self._workers, []
        for worker in workers:
            worker.stop()
        dispatcher, self._dispatcher = self._dispatcher, None
        if dispatcher is not None:
            dispatcher.stop()
        self._target = None

    def __enter__(self) -> LocalService:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"target={self._target!r}" if self.running else "stopped"
        return f"LocalService(num_workers={self.num_workers}, {state})"


__all__ = ["PROCESSING_MODES", "LocalService", "distribute"]
