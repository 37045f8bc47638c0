"""Argument checks shared by the options, saved states and the tf.data service: one wording
for every integer a user passes."""

from __future__ import annotations

from typing import Any


def check_int(
    name: str,
    value: Any,
    low: int,
    high: int | None = None,
    *,
    optional: bool = False,
    wrong_type: type[Exception] = TypeError,
) -> None:
    """Raise unless ``value`` is an int (not a bool) in ``[low, high]`` (``high=None``: no
    upper bound), or ``None`` when ``optional``; the error names the option. A value that is
    no int at all raises ``wrong_type``, one out of range ``ValueError``.

    >>> check_int("prefetch", 0, 1, 8)
    Traceback (most recent call last):
    ...
    ValueError: prefetch must be an int from 1 to 8, got 0
    """
    if value is None and optional:
        return
    allowed = f"an int from {low} to {high}" if high is not None else f"an int >= {low}"
    allowed += " or None" if optional else ""
    if isinstance(value, bool) or not isinstance(value, int):
        raise wrong_type(f"{name} must be {allowed}, got {value!r}")
    if not (low <= value and (high is None or value <= high)):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


# "grpc://host:port" or "host:port"; host may be a name, an IPv4 address or a bracketed IPv6.
