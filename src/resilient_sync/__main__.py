"""``python -m resilient_sync``: the ``resilient-sync`` command line."""

from __future__ import annotations

from ._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
