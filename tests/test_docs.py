"""Every example in the docs runs, and the docs site builds.

- Each ```python block in ``docs/**/*.md`` and ``README.md`` is executed: a
  file's blocks in order, in one namespace (later blocks use earlier names),
  in a fresh temporary working directory. One test per file; a failure names
  the file and the line of the block, and the traceback points into the
  Markdown file itself.
- ```python no-run blocks are not executed (signatures, fragments).
- ```python postgres blocks need PostgreSQL on 127.0.0.1:5432: without it the
  file is skipped (it fails instead when ``CI=true``).
- The doctests in ``src/resilient_sync`` run too.
- The site (``mkdocs.yml``) builds with ``mkdocs build --strict`` — no broken
  link or anchor, every page in the nav — and its API reference, generated from
  the docstrings by mkdocstrings, has an entry for every public name. Skipped
  when mkdocs is not installed (it fails instead when ``CI=true``).
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import os
import pkgutil
import re
import socket
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

import attrs
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SRC = ROOT / "src" / "resilient_sync"
POSTGRES = ("127.0.0.1", 5432)

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")


@attrs.frozen
class Block:
    """One fenced code block of a Markdown file."""

    info: str  # the info string, e.g. "python" or "python no-run"
    line: int  # 1-based line of the first code line
    code: str

    @property
    def words(self) -> list[str]:
        return self.info.split()

    @property
    def is_python(self) -> bool:
        return bool(self.words) and self.words[0] == "python"

    @property
    def runs(self) -> bool:
        return self.is_python and "no-run" not in self.words[1:]

    @property
    def needs_postgres(self) -> bool:
        return self.runs and "postgres" in self.words[1:]


def parse_blocks(text: str) -> list[Block]:
    """The fenced code blocks of a Markdown text, in order (CommonMark fences)."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence, info, indent = match["fence"], match["info"].strip(), len(match["indent"])
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            stripped = lines[j].lstrip(" ")
            if (
                len(lines[j]) - len(stripped) <= 3
                and stripped.startswith(fence)
                and not stripped.strip(fence[0]).strip()
            ):
                break
            body.append(lines[j][indent:] if lines[j][:indent].isspace() else lines[j])
            j += 1
        blocks.append(Block(info=info, line=i + 2, code="\n".join(body) + "\n"))
        i = j + 1
    return blocks


def doc_files() -> list[Path]:
    files = sorted(DOCS.rglob("*.md")) if DOCS.is_dir() else []
    readme = ROOT / "README.md"
    return [*files, readme] if readme.exists() else files


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _postgres_up() -> bool:
    try:
        with socket.create_connection(POSTGRES, timeout=1.0):
            return True
    except OSError:
        return False


def _params() -> list[Any]:
    params = []
    for path in doc_files():
        blocks = parse_blocks(path.read_text(encoding="utf-8"))
        marks = [pytest.mark.postgres] if any(b.needs_postgres for b in blocks) else []
        params.append(pytest.param(path, marks=marks, id=_rel(path)))
    return params


@pytest.mark.parametrize("path", _params())
def test_doc_examples_run(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = [b for b in parse_blocks(path.read_text(encoding="utf-8")) if b.runs]
    if not blocks:
        return
    if any(b.needs_postgres for b in blocks) and not _postgres_up():
        message = f"{_rel(path)} has ```python postgres blocks and 127.0.0.1:5432 is down"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": f"docs_{path.stem.replace('-', '_')}"}
    for block in blocks:
        failure = _run_block(path, block, namespace)
        if failure is not None:
            pytest.fail(failure, pytrace=False)


def _run_block(path: Path, block: Block, namespace: dict[str, Any]) -> str | None:
    """Run one block; return a failure message naming the file and line, or None."""
    # pad with blank lines so tracebacks show the line numbers of the .md file
    source = "\n" * (block.line - 1) + block.code
    try:
        code = compile(source, str(path), "exec", dont_inherit=True)
        exec(code, namespace)  # noqa: S102 - running the docs' own examples is the point
    except (pytest.skip.Exception, KeyboardInterrupt):
        raise
    except BaseException as exc:  # reported with the file and line
        details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return (
            f"{_rel(path)}: the python block at line {block.line} failed with "
            f"{type(exc).__name__}: {exc}\n\n{details}"
        )
    return None


# -- the parser itself ---------------------------------------------------------


def test_parse_blocks_reads_info_strings_lines_and_nested_fences() -> None:
    text = (
        "# Title\n"  # 1
        "```python\n"  # 2
        "x = 1\n"  # 3
        "```\n"  # 4
        "````markdown\n"  # 5
        "```python\n"  # 6
        "not code\n"  # 7
        "```\n"  # 8
        "````\n"  # 9
        "```python no-run\n"  # 10
        "broken(\n"  # 11
        "```\n"  # 12
        "```python postgres\n"  # 13
        "y = 2\n"  # 14
        "```\n"  # 15
        "```pycon\n"  # 16
        ">>> 1\n"  # 17
        "```\n"  # 18
    )
    blocks = parse_blocks(text)
    assert [(b.info, b.line) for b in blocks] == [
        ("python", 3),
        ("markdown", 6),
        ("python no-run", 11),
        ("python postgres", 14),
        ("pycon", 17),
    ]
    assert blocks[0].code == "x = 1\n"
    assert [b.runs for b in blocks] == [True, False, False, True, False]
    assert [b.needs_postgres for b in blocks] == [False, False, False, True, False]


def test_failing_block_names_file_and_line(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("intro\n\n```python\na = 1\nraise ValueError('boom')\n```\n")
    (block,) = parse_blocks(page.read_text())
    source = "\n" * (block.line - 1) + block.code
    with pytest.raises(ValueError, match="boom") as info:
        exec(compile(source, str(page), "exec"), {})  # noqa: S102
    frame = info.traceback[-1]
    assert Path(str(frame.path)) == page
    assert frame.lineno + 1 == 5  # pytest's lineno is 0-based; the raise is on line 5


def test_docs_exist() -> None:
    """The pages this test suite is meant to guard are there."""
    for page in (
        "index.md",
        "tutorial/quickstart.md",
        "concepts/promises.md",
        "concepts/state-machine.md",
        "concepts/error-taxonomy.md",
        "howto/write-a-destination.md",
        "howto/test-your-integration.md",
        "reference/api.md",
    ):
        assert (DOCS / page).is_file(), f"docs/{page} is missing"


# -- doctests in the package ------------------------------------------------------


def _modules_with_doctests() -> list[str]:
    names = []
    for file in sorted(SRC.rglob("*.py")):
        if ">>>" not in file.read_text(encoding="utf-8"):
            continue
        parts = file.relative_to(SRC.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return names


@pytest.mark.parametrize("module_name", _modules_with_doctests())
def test_doctests(module_name: str) -> None:
    module = importlib.import_module(module_name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = finder.find(module, module_name)
    assert tests, f"{module_name} mentions >>> but has no doctest"
    report: list[str] = []
    for test in tests:
        runner.run(test, out=report.append)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"doctests failed in {module_name}:\n" + "".join(report)


# -- the documentation site ----------------------------------------------------------


def _public_modules() -> list[Any]:
    """The package and every public module below it that has ``__all__``."""
    root = importlib.import_module("resilient_sync")
    found = [root]
    pending = [root]
    while pending:
        package = pending.pop()
        for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
            if info.name.rsplit(".", 1)[-1].startswith("_"):
                continue
            module = importlib.import_module(info.name)
            if isinstance(getattr(module, "__all__", None), (list, tuple)):
                found.append(module)
            if info.ispkg:
                pending.append(module)
    return found


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built once with ``mkdocs build --strict`` as ``tasks.py docs`` does."""
    missing = [m for m in ("mkdocs", "mkdocstrings", "material") if not importlib.util.find_spec(m)]
    if missing:
        message = (
            f"{', '.join(missing)} not installed, so the docs site is not built here; "
            "install the docs extra: .venv/bin/pip install -e '.[docs]'"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    out = tmp_path_factory.mktemp("site")
    config = ["--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(out)]
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", *config],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    if result.returncode != 0:
        pytest.fail(
            "mkdocs build --strict failed (a broken link or anchor, a page missing from "
            "the nav, a docstring that does not parse?); run `python3 tasks.py docs`:\n"
            + (result.stderr + result.stdout)[-6000:],
            pytrace=False,
        )
    return out


def test_site_builds_strictly(site: Path) -> None:
    assert (site / "index.html").is_file()
    assert (site / "search" / "search_index.json").is_file(), "search is off"
    for page in sorted(DOCS.rglob("*.md")):
        html = site / page.relative_to(DOCS).with_suffix("") / "index.html"
        if page.name == "index.md":
            html = site / page.relative_to(DOCS).parent / "index.html"
        assert html.is_file(), f"docs/{page.relative_to(DOCS)} was not built"


def test_api_reference_covers_every_public_name(site: Path) -> None:
    """Each public module and each name of its ``__all__`` has an entry (an anchor
    named by its path) on one of the reference pages."""
    anchors: set[str] = set()
    for html in (site / "reference").rglob("index.html"):
        anchors |= set(re.findall(r'id="(resilient_sync[^"]*)"', html.read_text(encoding="utf-8")))
    modules = _public_modules()
    assert {"resilient_sync.stores", "resilient_sync.testing.contract"} <= {
        m.__name__ for m in modules
    }
    missing = [
        path
        for module in modules
        for path in (module.__name__, *(f"{module.__name__}.{n}" for n in module.__all__))
        if path not in anchors
    ]
    assert not missing, (
        "not in the API reference (add a page under docs/reference/api/ and to the nav "
        "in mkdocs.yml, or check the filters there): " + ", ".join(missing)
    )


# -- links between pages --------------------------------------------------------------

_LINK = re.compile(r"\]\((?!https?://|mailto:)([^)\s#]*)(?:#([^)\s]*))?\)")


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    anchors: set[str] = set()
    in_fence = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and line.startswith("#"):
            anchors.add(_slug(line.lstrip("#")))
    return anchors


def _documents(path: Path, anchor: str) -> bool:
    """Whether a reference page's ``::: module`` directive documents the object
    ``anchor`` (mkdocstrings names each entry's anchor by its dotted path)."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("::: "):
            continue
        module_name = line[4:].strip()
        if anchor != module_name and not anchor.startswith(module_name + "."):
            continue
        obj: Any = importlib.import_module(module_name)
        try:
            for name in anchor[len(module_name) :].split(".")[1:]:
                obj = getattr(obj, name)
        except AttributeError:
            return False
        return True
    return False


def test_relative_links_point_to_existing_files_and_headings() -> None:
    """Without mkdocs too (and for README.md, which is not in the site): every
    relative link reaches a file and a heading; a page of the site links only
    to files of the site (``mkdocs build --strict`` rejects the rest: name a
    file outside docs/ as code, e.g. `examples/shop_to_pos/`)."""
    broken = []
    for path in doc_files():
        in_fence = False
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if _FENCE.match(line):
                in_fence = not in_fence
            if in_fence:
                continue
            for target, anchor in _LINK.findall(line):
                file = (path.parent / target) if target else path
                if not file.exists():
                    broken.append(f"{_rel(path)}:{number}: {target} does not exist")
                elif path.is_relative_to(DOCS) and not file.resolve().is_relative_to(DOCS):
                    broken.append(f"{_rel(path)}:{number}: {target} is outside docs/")
                elif (
                    anchor
                    and file.suffix == ".md"
                    and anchor not in _anchors(file)
                    and not _documents(file, anchor)
                ):
                    broken.append(f"{_rel(path)}:{number}: no heading #{anchor} in {target}")
    assert not broken, "broken links:\n" + "\n".join(broken)
