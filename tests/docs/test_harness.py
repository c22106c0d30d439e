"""The docs-as-tests harness itself: the convention is parsed as written, and a recipe that does
not run as written (a failing command, a missing output, a wrong exit status, a broken README
recipe against the live server) fails the test, naming the document and line."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import live
from .markdown_blocks import DocFormatError, parse
from .session import DocSession, DocTestFailure, Substitutions


def _run(tmp_path: Path, markdown: str, substitutions: Substitutions | None = None) -> int:
    document = tmp_path / "guide.md"
    document.write_text(markdown)
    workdir = tmp_path / "work"
    workdir.mkdir()
    session = DocSession(
        workdir,
        live.reader_env(workdir),
        substitutions or Substitutions(),
        live.VENV_BIN / "python",
    )
    return session.run(parse(document))


# --- parsing -------------------------------------------------------------------------------------


def test_blocks_directives_and_expectations_are_parsed(tmp_path: Path) -> None:
    text = """# Guide

```sh
echo one
# -> one
false
# -> exit 1
echo tail
```

<!-- doc-test: skip needs a Docker engine here -->
```sh
docker build .
```

<!-- doc-test: save app.mjs -->
```js
console.log('hi');
```

```json
{"not": "run"}
```
"""
    shell, skipped, saved, data = parse(tmp_path / "g.md", text)
    assert (shell.language, shell.first_line, shell.runs) == ("sh", 4, True)
    first, second, third = shell.chunks()
    assert (first.text, first.expected, first.exit_code) == ("echo one\n", ["one"], 0)
    assert (second.text, second.exit_code, second.first_line) == ("false\n", 1, 6)
    assert (third.text, third.expected) == ("echo tail\n", [])
    assert skipped.skip == "needs a Docker engine here" and not skipped.runs
    assert saved.save_as == "app.mjs" and not saved.runs
    assert data.language == "json" and not data.runs


@pytest.mark.parametrize(
    ("markdown", "problem"),
    [
        ("```js\nconsole.log(1)\n```\n", "must say how the user saves it"),
        ("<!-- doc-test: sikp typo -->\n```sh\ntrue\n```\n", "unknown doc-test directive 'sikp'"),
        ("<!-- doc-test: skip -->\n```sh\ntrue\n```\n", "`skip` needs a reason"),
        ("```sh\ntrue\n", "never closed"),
        ("<!-- doc-test: background -->\n```python\npass\n```\n", "shell blocks only"),
    ],
)
def test_convention_mistakes_are_errors(tmp_path: Path, markdown: str, problem: str) -> None:
    with pytest.raises(DocFormatError, match=re.escape(problem)):
        parse(tmp_path / "g.md", markdown)


# --- running -------------------------------------------------------------------------------------


def test_a_good_document_runs_with_state_across_blocks(tmp_path: Path) -> None:
    ran = _run(
        tmp_path,
        """```sh
GREETING="hello   there"
echo "$GREETING"
# -> hello there
```

Skipped, so its failure does not matter:

<!-- doc-test: skip would fail on purpose, never run -->
```sh
exit 3
```

```sh
echo "still $GREETING" >&2
# -> still hello
sh -c 'exit 4'
# -> exit 4
echo after
# -> after
```

```python
print("from python", 6 * 7)
# -> from python 42
```
""",
    )
    assert ran == 3


def test_a_failing_command_fails_naming_the_line(tmp_path: Path) -> None:
    markdown = "```sh\necho ok\n```\n\n```sh\necho before\nls /no/such/folder\necho never\n```\n"
    with pytest.raises(DocTestFailure) as failure:
        _run(tmp_path, markdown)
    message = str(failure.value)
    assert message.startswith(f"{_rel(tmp_path)}:6: the documented commands failed")
    assert "/no/such/folder" in message and "never" not in message.split("their output")[1]


def test_a_missing_output_fails(tmp_path: Path) -> None:
    with pytest.raises(DocTestFailure, match="the output lacks the documented 'goodbye'"):
        _run(tmp_path, "```sh\necho hello\n# -> goodbye\n```\n")


def test_a_wrong_exit_status_fails(tmp_path: Path) -> None:
    with pytest.raises(DocTestFailure, match="exit 1, documented: exit 2"):
        _run(tmp_path, "```sh\nfalse\n# -> exit 2\n```\n")


def test_an_unset_variable_fails(tmp_path: Path) -> None:
    with pytest.raises(DocTestFailure, match="NOT_DEFINED"):
        _run(tmp_path, '```sh\necho "$NOT_DEFINED"\n```\n')


def test_a_failing_python_block_fails(tmp_path: Path) -> None:
    with pytest.raises(DocTestFailure, match="ZeroDivisionError"):
        _run(tmp_path, "```python\nprint(1 / 0)\n```\n")


LISTENER = """import signal, socket, sys
host, _, port = sys.argv[1].rpartition(":")
server = socket.create_server((host, int(port)))
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("listening", flush=True)
signal.pause()
"""


def test_a_background_server_is_waited_for_and_stopped(tmp_path: Path) -> None:
    port = live.free_port()
    substitutions = Substitutions()
    substitutions.add("127.0.0.1:7777", f"127.0.0.1:{port}")
    substitutions.ports.add(port)
    markdown = (
        f"<!-- doc-test: save listener.py -->\n```python\n{LISTENER}```\n\n"
        "<!-- doc-test: background -->\n"
        "```sh\necho starting\npython3 listener.py 127.0.0.1:7777\n```\n\n"
        '```sh\npython3 -c \'import socket; socket.create_connection(("127.0.0.1", '
        f"{port}), 2)'\necho connected\n# -> connected\n```\n"
    )
    assert _run(tmp_path, markdown, substitutions) == 2


def test_a_background_command_that_dies_fails(tmp_path: Path) -> None:
    port = live.free_port()
    substitutions = Substitutions()
    substitutions.add("127.0.0.1:7777", f"127.0.0.1:{port}")
    substitutions.ports.add(port)
    markdown = (
        "<!-- doc-test: background -->\n```sh\nsh -c 'echo oops; exit 1' 127.0.0.1:7777\n```\n"
    )
    with pytest.raises(DocTestFailure, match="oops"):
        _run(tmp_path, markdown, substitutions)


def _rel(tmp_path: Path) -> str:
    import os

    return os.path.relpath(tmp_path / "guide.md")


# --- a deliberately broken recipe, against the live server ---------------------------------------


@pytest.fixture
def databases(admin_database_url: str) -> Iterator[live.Databases]:
    created = live.Databases(admin_database_url)
    yield created
    created.drop_all()


@pytest.mark.slow
def test_a_broken_readme_recipe_fails_against_the_live_server(
    tmp_path: Path, databases: live.Databases
) -> None:
    """The README's CreateConnection without `skip_verification` (issue 10, finding 1): the
    made-up key cannot be verified, so the recipe and everything after it must fail."""
    readme = (live.ROOT / "README.md").read_text()
    broken = readme.replace(', "skip_verification": true}', "}", 1)
    assert broken != readme
    (tmp_path / "README.md").write_text(broken)
    line = next(
        number
        for number, text in enumerate(broken.splitlines(), 1)
        if "CreateConnection" in text and text.strip().startswith("localhost")
    )
    server = live.start(tmp_path / "reader", databases)
    try:
        with pytest.raises(DocTestFailure) as failure:
            server.session().run(parse(tmp_path / "README.md"))
    finally:
        server.stop()
    message = str(failure.value)
    first_line = int(message.split(":", 2)[1])
    assert first_line < line, message  # the chunk that holds the CreateConnection call
    assert "Code: FailedPrecondition" in message or "CREDENTIALS_REJECTED" in message
