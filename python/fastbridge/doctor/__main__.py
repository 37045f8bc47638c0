"""``python -m fastbridge.doctor``: see ``fastbridge.doctor``."""

from __future__ import annotations

from ._cli import main

# Guarded: worker processes (Grain's mp_prefetch) import the main module again.
if __name__ == "__main__":
    raise SystemExit(main())
