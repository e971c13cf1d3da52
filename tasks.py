#!/usr/bin/env python3
"""Developer entry points that work on a fresh machine with only Python 3.10+.

    python3 tasks.py demo    # the main job: the demo on the embedded SQLite default
    python3 tasks.py test    # the whole test suite
    python3 tasks.py lint    # ruff and mypy --strict
    python3 tasks.py bench   # the benchmark suite (bench/run.py; --quick: < 2 minutes)
    python3 tasks.py docs    # build the documentation site into site/ (mkdocs build --strict)
    python3 tasks.py docs serve   # preview it on http://127.0.0.1:8000 while writing

Each command creates ``.venv`` (once) and installs the package with its
``dev`` (which pulls in ``docs``) and ``postgres`` extras into it (``bench``
adds the ``bench`` extra: the peers it measures against), so nothing else
has to be set up.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".installed"
EXTRAS = "dev,postgres"


def ensure_venv(extras: str = EXTRAS) -> None:
    if sys.version_info < (3, 10):  # noqa: UP036 - tasks.py runs before anything is installed
        sys.exit(f"resilient_sync needs Python 3.10+, this is {sys.version.split()[0]}")
    if not PY.exists():
        print("creating .venv ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    stamp, wanted = (ROOT / "pyproject.toml").stat().st_mtime_ns, set(extras.split(","))
    old_stamp, _, old_extras = (STAMP.read_text() if STAMP.exists() else "").partition(" ")
    # an install with more extras (bench) also serves the commands that need fewer
    if old_stamp != str(stamp) or not wanted <= set(old_extras.split(",")):
        print(f"installing resilient-sync[{extras}] into .venv ...", flush=True)
        run([str(PY), "-m", "pip", "install", "-q", "-e", f"{ROOT}[{extras}]"])
        STAMP.write_text(f"{stamp} {extras}")


def run(cmd: list[str]) -> None:
    result = subprocess.run(cmd, cwd=ROOT, check=False)
    if result.returncode != 0:
        sys.exit(result.returncode)


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in {"demo", "test", "lint", "bench", "docs"}:
        sys.exit(__doc__)
    command, rest = argv[0], argv[1:]
    ensure_venv(f"{EXTRAS},bench" if command == "bench" else EXTRAS)
    if command == "demo":
        run([str(PY), "-m", "resilient_sync", "demo", *rest])
    elif command == "test":
        run([str(PY), "-m", "pytest", *rest])
    elif command == "lint":
        linted = ["src", "tests", "bench", "docs", "examples", "tasks.py"]
        run([str(PY), "-m", "ruff", "check", *linted])
        run([str(PY), "-m", "ruff", "format", "--check", "src"])
        run([str(PY), "-m", "mypy", "--strict"])
        run([str(PY), "-m", "mypy", "--strict", "tests/typing"])
    elif command == "docs":
        os.environ.setdefault("NO_MKDOCS_2_WARNING", "1")  # Material's banner about MkDocs 2
        if rest[:1] == ["serve"]:
            run([str(PY), "-m", "mkdocs", "serve", *rest[1:]])
        else:
            run([str(PY), "-m", "mkdocs", "build", "--strict", *rest])
    else:
        os.environ["RESILIENT_SYNC_BENCH_VIA_TASKS"] = "1"
        run([str(PY), str(ROOT / "bench" / "run.py"), *rest])


if __name__ == "__main__":
    main(sys.argv[1:])
