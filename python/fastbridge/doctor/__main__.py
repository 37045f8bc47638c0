"""``python -m fastbridge.doctor``: see ``fastbridge.doctor``."""

from __future__ import annotations

from ._cli import main

raise SystemExit(main())
