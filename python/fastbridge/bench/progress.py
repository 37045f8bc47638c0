"""The progress of a run of measurements, on stderr: the bench's and the doctor's.

tqdm draws a bar when it is installed; without it a plain line comes every few seconds. (The
stream's own ``progress=True`` bar, with its batches/s and input wait, is another thing.)

>>> bar = Progress(2, enabled=False)
>>> bar.update("first"); bar.update("second"); bar.close()
>>> bar.done
2
"""

from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    """tqdm when installed and wanted, else one plain line now and then."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.done, self.enabled = total, 0, enabled
        self.bar: Any = None
        self.last = 0.0
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="run", dynamic_ncols=True, file=sys.stderr)
            except ImportError:
                pass

    def update(self, what: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_description(what, refresh=False)
            self.bar.update()
        elif self.enabled and (time.monotonic() - self.last > 5 or self.done == self.total):
            self.last = time.monotonic()
            print(f"[{self.done}/{self.total}] {what}", file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        """A status line above the bar (printing it directly would land inside the bar)."""
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
