"""Runs one role of the benchmark suite in its own process.

    python bench/worker.py module:function '{"keyword": "arguments"}'

(``common.start`` does this; ``bench/`` is this script's folder, so the
suite's modules and ``peers`` import as top-level names.)
"""

from __future__ import annotations

import importlib
import json
import sys

if __name__ == "__main__":
    module, _, name = sys.argv[1].partition(":")
    getattr(importlib.import_module(module), name)(**json.loads(sys.argv[2]))
