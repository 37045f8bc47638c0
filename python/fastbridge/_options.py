"""The options of ``stream()``: declared once, as one frozen dataclass, and checked once.

``stream()`` takes these fields as its keyword arguments (its signature is derived from this
class, so the two cannot drift apart), and :class:`Stream` receives the validated object.
Checks here need no source: they run before anything is read or allocated.

>>> from fastbridge import StreamOptions
>>> StreamOptions(prefetch=2).slots_or_default
4
>>> StreamOptions(prefetch=0)
Traceback (most recent call last):
...
ValueError: prefetch must be an int from 1 to 1048576, got 0
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import re
from collections.abc import Callable, Iterable
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

import jax

from ._backends import BACKENDS, BackendName
from ._checks import check_int
from ._leaves import DtypePolicy, check_policy
from ._native import MAX_QUEUE_CAPACITY

# Upper bounds on the integer options, checked before anything is allocated.
MAX_SLOTS = 1 << 20
MAX_COPY_THREADS = 1024
MAX_POOL_BYTES = (1 << 63) - 1


class Dispatcher(Protocol):
    """Anything with a dispatcher address in ``.target``: a ``fastbridge.service.LocalService``
    or TensorFlow's ``DispatchServer``."""

    @property
    def target(self) -> str: ...


def _count(default: int | None, low: int, high: int) -> Any:
    """A field holding an int in ``[low, high]`` (or ``None`` when that is its default)."""
    return dataclasses.field(default=default, metadata={"range": (low, high)})


def _flag(default: bool) -> Any:
    return dataclasses.field(default=default, metadata={"flag": True})


@dataclasses.dataclass(frozen=True, kw_only=True)
class StreamOptions:
    """Every option of :func:`fastbridge.stream`, validated; ``stream()`` documents each one.

    Build it once and reuse it: ``Stream(source, options)`` is ``stream(source, **fields)``.
    Wrong types raise ``TypeError`` and values out of range or in conflict ``ValueError``,
    each naming the option.
    """

    backend: BackendName = "auto"
    prefetch: int = _count(4, 1, MAX_QUEUE_CAPACITY)
    device: jax.Device | str | None = None
    sharding: jax.sharding.Sharding | None = None
    pad_last: bool = _flag(False)
    batch_size: int | None = _count(None, 1, MAX_POOL_BYTES)
    dtypes: DtypePolicy = "canonical"
    state: dict[str, Any] | None = None
    checkpoint: bool = _flag(False)
    service: str | Dispatcher | None = None
    shard_by_process: bool = _flag(True)
    progress: bool = _flag(False)
    max_pool_bytes: int | None = _count(None, 1, MAX_POOL_BYTES)
    slots: int | None = _count(None, 1, MAX_SLOTS)
    pin_memory: bool = _flag(True)
    copy_threads: int | None = _count(None, 1, MAX_COPY_THREADS)

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if "range" in field.metadata:
                low, high = field.metadata["range"]
                check_int(field.name, value, low, high, optional=field.default is None)
            elif "flag" in field.metadata and not isinstance(value, bool):
                raise TypeError(f"{field.name} must be True or False, got {value!r}")
        if self.backend not in BACKENDS:
            raise ValueError(
                f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {self.backend!r}"
            )
        if self.device is not None and not isinstance(self.device, (str, jax.Device)):
            raise TypeError(
                f"device must be a jax.Device, a platform name or None, got {self.device!r}"
            )
        if self.sharding is not None and not isinstance(self.sharding, jax.sharding.Sharding):
            raise TypeError(f"sharding must be a jax.sharding.Sharding, got {self.sharding!r}")
        if self.sharding is not None and self.device is not None:
            raise ValueError(
                "pass device= or sharding=, not both: a sharding already says which devices "
                "hold the batch"
            )
        if self.batch_size is not None and not self.pad_last:
            raise ValueError("batch_size= only applies with pad_last=True")
        if self.service is not None:
            service_target(self.service)
        check_policy(self.dtypes, x64_enabled())

    @property
    def slots_or_default(self) -> int:
        """Slots allocated before the pool counts as grown: ``prefetch + 2`` unless set."""
        return self.slots if self.slots is not None else self.prefetch + 2

    def copy_threads_for(self, platform: str) -> int:
        """Threads that fill one large slot, unless set: on CPU ``min(2, cpu_count)``, since
        the step needs the other cores; for an accelerator every core, so that filling slot
        k + 1 keeps up with the transfer of slot k."""
        if self.copy_threads is not None:
            return self.copy_threads
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        cores = cores or os.cpu_count() or 1
        return min(2, cores) if platform == "cpu" else cores


def x64_enabled() -> bool:
    """JAX's x64 switch as this thread sees it (``with jax.enable_x64():`` is thread-local)."""
    return bool(jax.config.read("jax_enable_x64"))  # type: ignore[no-untyped-call]


_SERVICE_RE = re.compile(
    r"^(?:(?P<protocol>[A-Za-z][A-Za-z0-9+.-]*)://)?"
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>[0-9]{1,5})$"
)


def service_target(service: Any) -> str:
    """``service=`` (of ``stream()`` and ``service.distribute()``) as ``"protocol://host:port"``,
    or an error naming the argument: an address string, or anything with one in ``.target``.

    >>> service_target("localhost:5050")
    'grpc://localhost:5050'
    """
    target = getattr(service, "target", service)  # a LocalService or a DispatchServer
    if not isinstance(target, str):
        raise TypeError(
            "service must be a dispatcher address string such as 'grpc://host:port' or "
            f"'host:port' (or an object with a .target string), got {service!r}"
        )
    match = _SERVICE_RE.match(target.strip())
    if match is None or not 0 < int(match["port"]) < 65536:
        raise ValueError(
            "service must be a dispatcher address 'grpc://host:port' or 'host:port' with a "
            f"port in 1..65535, got {service!r}"
        )
    protocol = match["protocol"] or "grpc"
    return f"{protocol}://{match['host']}:{match['port']}"


P = ParamSpec("P")
R = TypeVar("R")


def takes_options(
    options: Callable[P, StreamOptions],
) -> Callable[
    [Callable[[Iterable[Any], StreamOptions], R]], Callable[Concatenate[Iterable[Any], P], R]
]:
    """Give ``build(source, options)`` the signature ``(source, *, <each option>)``.

    Type checkers see the options' own parameters (through ``ParamSpec``; to them ``source``
    is positional only) and ``help()`` shows them (through ``__signature__``): the keywords
    are declared once, in the dataclass. Arguments are bound to that signature first, so a
    wrong call is reported as the caller wrote it (``stream() got an unexpected keyword``).
    """

    def decorate(
        build: Callable[[Iterable[Any], StreamOptions], R],
    ) -> Callable[Concatenate[Iterable[Any], P], R]:
        source = inspect.Parameter(
            "source", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation="Iterable[Any]"
        )
        params = list(inspect.signature(options).parameters.values())
        signature = inspect.Signature(
            [source, *params], return_annotation=inspect.signature(build).return_annotation
        )

        @functools.wraps(build)
        def call(*args: Any, **kwargs: Any) -> R:
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError as error:
                raise TypeError(f"{build.__name__}(): {error}") from None
            arguments = dict(bound.arguments)
            source = arguments.pop("source")
            return build(source, options(**arguments))  # type: ignore[call-arg]  # all keywords

        call.__signature__ = signature  # type: ignore[attr-defined]
        return call

    return decorate
