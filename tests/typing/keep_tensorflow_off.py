"""Checked by ``make lint`` (``mypy --strict``), never run: ``keep_tensorflow_off()`` is typed."""

from fastbridge import keep_tensorflow_off

hidden: bool = keep_tensorflow_off()
keep_tensorflow_off("GPU")  # type: ignore[call-arg]
