"""Docs are tests: every shell, Python and JavaScript block of the user-facing documents runs
as written, in order, against a live server (see CONTRIBUTING.md, "Docs are tests")."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import live
from .markdown_blocks import RUNNABLE, parse

# Every document a user follows. A new one goes here; its blocks then run too.
DOCUMENTS = ("README.md", "docs/operators.md", "docs/sdk-python.md", "clients/node/README.md")


@pytest.fixture
def databases(admin_database_url: str) -> Iterator[live.Databases]:
    created = live.Databases(admin_database_url)
    yield created
    created.drop_all()


def _repository_status() -> str:
    return subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=live.ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    ).stdout


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("document", DOCUMENTS)
def test_document_runs_as_written(document: str, tmp_path: Path, databases: live.Databases) -> None:
    blocks = parse(live.ROOT / document)
    if any(block.save_as and block.save_as.endswith((".js", ".mjs", ".cjs")) for block in blocks):
        live.ensure_node_modules()
    before = _repository_status()
    server = live.start(tmp_path / "reader", databases)
    try:
        ran = server.session().run(blocks)
    finally:
        server.stop()
    runnable = [b for b in blocks if b.language in RUNNABLE and b.skip is None]
    assert ran == len([b for b in runnable if b.save_as is None]), "a block did not run"
    assert _repository_status() == before, "the recipes left files in the repository"


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_skipped_block_says_why(document: str) -> None:
    for block in parse(live.ROOT / document):
        if block.skip is not None:
            assert len(block.skip.split()) >= 3, f"{block.where}: give a reason to skip"
