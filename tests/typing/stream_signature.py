"""Checked by ``make lint`` (``mypy --strict``), never run: ``stream()``'s keywords are typed.

Each ``type: ignore`` below must be needed (``warn_unused_ignores`` is on under ``--strict``),
so if ``stream()`` lost its typed signature, mypy would fail on this file.
"""

import numpy as np
from fastbridge import Stream, StreamOptions, stream

data = [np.zeros(3, np.float32)]

ok: Stream[object] = stream(data, prefetch=2, backend="numpy", pad_last=False)
also: Stream[object] = Stream(data, StreamOptions(prefetch=2))

stream(data, prefetch="2")  # type: ignore[arg-type]
stream(data, backend="fast")  # type: ignore[arg-type]
stream(data, prefetchh=2)  # type: ignore[call-arg]
