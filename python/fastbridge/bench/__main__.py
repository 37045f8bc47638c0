"""``python -m fastbridge.bench``: see ``--help`` and benches/README.md."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
