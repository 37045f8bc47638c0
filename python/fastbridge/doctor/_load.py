"""Turning ``MODULE:NAME`` into the user's callables, and the first look at their dataset."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

from .._tfdata import is_dataset


class DoctorError(ValueError):
    """A factory, step or option the doctor cannot use; the message names it and its value."""


class StepError(RuntimeError):
    """The user's step raised; the original exception is the ``__cause__``."""


def resolve(spec: str | Callable[..., Any], argument: str) -> Callable[..., Any]:
    """The callable that ``spec`` names (``MODULE:NAME``, MODULE dotted or a ``.py`` path).

    >>> resolve("os.path:join", "factory")("a", "b")
    'a/b'
    """
    if callable(spec):
        return spec
    if not isinstance(spec, str):
        raise DoctorError(
            f"{argument} must be a callable or 'MODULE:NAME', got {type(spec).__name__} {spec!r}"
        )
    module_name, sep, attribute = spec.rpartition(":")
    if not sep or not module_name or not attribute:
        raise DoctorError(
            f"{argument} must look like MODULE:NAME (e.g. my_data:make_dataset or "
            f"path/to/data.py:make_dataset), got {spec!r}"
        )
    module = _import(module_name, argument, spec)
    value: Any = module
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise DoctorError(
                f"{argument} {spec!r}: module {module_name!r} has no attribute {attribute!r}"
            ) from None
    if not callable(value):
        raise DoctorError(
            f"{argument} {spec!r} is a {type(value).__name__}, not a callable"
            + (
                ": name a function that returns a fresh dataset on each call"
                if argument == "factory"
                else ""
            )
        )
    return value  # type: ignore[no-any-return]


def _import(name: str, argument: str, spec: str) -> Any:
    if name.endswith(".py") or os.sep in name or "/" in name:
        path = os.path.abspath(name)
        if not os.path.isfile(path):
            raise DoctorError(f"{argument} {spec!r}: no such file {name!r}")
        # Import it by its own name with its folder on the path, as `python file.py` would:
        # worker processes (Grain's mp_prefetch) then find its functions by the same name.
        folder, file = os.path.split(path)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        name = file.removesuffix(".py")
    elif os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # `python -m` puts the current folder first; so do we
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name is not None and name.startswith(error.name):
            raise DoctorError(
                f"{argument} {spec!r}: module {name!r} not found (looked in the current "
                f"folder {os.getcwd()!r} and on sys.path)"
            ) from None
        raise  # the module exists but imports something missing: the user's traceback helps


def describe(factory: Any) -> str:
    """The factory's name as the user would write it."""
    module = getattr(factory, "__module__", None)
    name = getattr(factory, "__qualname__", None) or type(factory).__name__
    return f"{module}:{name}" if module else str(name)


def kind_of(source: Any) -> str:
    """``tf.data``, ``grain`` (MapDataset, IterDataset, DataLoader) or ``iterable``."""
    if is_dataset(source):
        return "tf.data"
    if type(source).__module__.startswith("grain"):
        return "grain"
    return "iterable"


def fresh(factory: Callable[[], Any], name: str) -> Any:
    """One call of the factory, checked: it must give something to iterate."""
    try:
        source = factory()
    except Exception as error:
        raise DoctorError(f"factory {name!r} raised {type(error).__name__}: {error}") from error
    if isinstance(source, (str, bytes, dict)) or not hasattr(source, "__iter__"):
        raise DoctorError(
            f"factory {name!r} returned {type(source).__name__} {_short(source)}, which is "
            "not a dataset: it must return a tf.data.Dataset, a Grain dataset or DataLoader, "
            "or an iterable of NumPy batches"
        )
    return source


def numpy_batches(source: Any) -> Iterator[Any]:
    """The source's batches as NumPy, the way a loop without fastbridge reads them."""
    if is_dataset(source):
        return iter(source.as_numpy_iterator())
    return iter(source)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
