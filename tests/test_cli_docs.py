"""The CLI's documentation is true: the reference names every command and
option, the quickstart runs twice in a row, the install instructions do not
promise a public index, the systemd unit stops the worker cleanly.

(Every ``python`` block of these pages also runs in ``tests/test_docs.py``.)
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import pytest

from resilient_sync._cli._args import build_parser
from test_docs import parse_blocks

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_the_cli_reference_documents_every_command_and_option() -> None:
    text = (DOCS / "reference" / "cli.md").read_text(encoding="utf-8")
    headings = [line for line in text.splitlines() if line.startswith("#")]
    missing = []
    for name, sub in _commands().items():
        if not any(f"`{name}" in h or f"`{name} " in h for h in headings):
            missing.append(f"no heading for the {name} command")
        for action in sub._actions:
            for option in action.option_strings:
                if option in ("-h", "--help"):
                    continue
                if not re.search(rf"`{re.escape(option)}[` =,]", text):
                    missing.append(f"{name} {option}")
    assert not missing, missing
    for option in ("--db", "--json", "--actor", "--verbose", "-v", "--version"):
        assert f"`{option}" in text, option


def _run_blocks(path: Path, namespace: dict[str, Any]) -> None:
    for block in parse_blocks(path.read_text(encoding="utf-8")):
        if block.runs:
            source = "\n" * (block.line - 1) + block.code
            exec(compile(source, str(path), "exec"), namespace)  # noqa: S102 - the docs' examples


def test_the_quickstart_runs_twice_in_a_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 14: a reader who runs the tutorial again finds ``sync.db`` from
    the first time; the page must still work."""
    monkeypatch.chdir(tmp_path)
    page = DOCS / "tutorial" / "quickstart.md"
    _run_blocks(page, {"__name__": "quickstart_1"})
    assert (tmp_path / "sync.db").exists()
    _run_blocks(page, {"__name__": "quickstart_2"})


@pytest.mark.parametrize("page", ["README.md", "docs/tutorial/quickstart.md"])
def test_install_instructions_install_from_a_checkout_or_a_wheel(page: str) -> None:
    text = (ROOT / page).read_text(encoding="utf-8")
    assert not re.search(r"pip install +'?resilient-sync", text), "there is no public index"
    assert "pip install -e" in text
    assert "wheel" in text


def test_no_docstring_sends_users_to_design_md() -> None:
    mentions = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in sorted((ROOT / "src").rglob("*.py"))
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "DESIGN.md" in line
    ]
    assert not mentions, f"users have docs/, not DESIGN.md: {mentions}"


def test_the_systemd_unit_stops_the_worker_cleanly() -> None:
    text = (DOCS / "howto" / "deploy-a-worker.md").read_text(encoding="utf-8")
    (unit,) = [
        b.code
        for b in parse_blocks(text)
        if b.info == "ini" and "[Service]" in b.code and "resilient-sync worker" in b.code
    ]
    settings = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#")
    )
    assert settings["Restart"] == "always"
    assert settings["KillSignal"] == "SIGTERM"
    assert "EnvironmentFile" in settings
    shutdown = re.search(r"--shutdown-timeout (\d+)", settings["ExecStart"])
    assert shutdown is not None
    assert int(settings["TimeoutStopSec"]) > int(shutdown.group(1))


def test_the_new_pages_are_linked_from_the_index() -> None:
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    for page in ("howto/troubleshooting.md", "howto/deploy-a-worker.md", "reference/cli.md"):
        assert (DOCS / page).is_file()
        assert f"]({page})" in index, page
    faq = (DOCS / "howto" / "troubleshooting.md").read_text(encoding="utf-8")
    for question in (
        "Why is it pending?",
        "Nothing happens",
        'It says "duplicate"',
        '"Retries exhausted"',
        "A destination is paused",
    ):
        assert f"## {question}" in faq, question
