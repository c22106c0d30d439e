"""The fenced code blocks of a Markdown document, with their doc-test directives and the
expected outputs written inside them (the convention is in CONTRIBUTING.md, "Docs are tests").

* A block's language decides what happens to it: ``sh``/``bash``/``shell`` blocks run in the
  document's shell session, ``python`` blocks run as scripts with the venv's Python, ``js`` and
  ``mjs`` blocks must be saved (``save FILE``) and run by a later shell block, as the user would;
  other languages (``json``, ``text``, none) are never run.
* Directives are HTML comments on the lines right above the opening fence, invisible when
  rendered, one directive a comment: ``<!-- doc-test: skip REASON -->``,
  ``<!-- doc-test: save FILE -->``, ``<!-- doc-test: background -->`` (the block's last command
  keeps running: a server).
* Inside a block, a comment line ``# -> TEXT`` (``// -> TEXT`` in JavaScript) states output that
  the commands since the previous such line must print; ``# -> exit N`` states their last
  command's exit status (default: every command must exit 0).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

SHELL = frozenset({"sh", "bash", "shell"})
PYTHON = frozenset({"python", "py"})
JAVASCRIPT = frozenset({"js", "javascript", "mjs"})
RUNNABLE = SHELL | PYTHON | JAVASCRIPT

_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
_DIRECTIVE = re.compile(r"^\s*<!--\s*doc-test:\s*(.*?)\s*-->\s*$")
_EXPECT = re.compile(r"^\s*(?:#|//) -> ?(.*)$")
_EXIT = re.compile(r"^exit (\d+)$")


class DocFormatError(ValueError):
    """The document breaks the doc-test convention (an unknown directive, a JS block that says
    not how to save it, a fence left open)."""


@dataclass
class Chunk:
    """Consecutive lines of a block up to an expectation: they run together, then the output
    they printed is checked."""

    text: str
    first_line: int  # 1-based line in the document
    expected: list[str] = field(default_factory=list)
    exit_code: int = 0


@dataclass
class Block:
    path: Path
    language: str
    text: str
    first_line: int  # the line after the opening fence, 1-based
    skip: str | None = None
    save_as: str | None = None
    background: bool = False

    @property
    def name(self) -> str:
        return os.path.relpath(self.path)

    @property
    def where(self) -> str:
        return f"{self.name}:{self.first_line}"

    @property
    def runs(self) -> bool:
        return self.skip is None and self.save_as is None and self.language in SHELL | PYTHON

    def chunks(self) -> list[Chunk]:
        """The block split after each run of expectation lines."""
        chunks: list[Chunk] = []
        lines: list[str] = []
        start = self.first_line
        current: Chunk | None = None
        for offset, line in enumerate(self.text.splitlines()):
            match = _EXPECT.match(line)
            if match:
                if current is None:
                    current = Chunk("\n".join(lines) + "\n", start)
                    chunks.append(current)
                    lines = []
                text = match.group(1).strip()
                exit_match = _EXIT.match(text)
                if exit_match:
                    current.exit_code = int(exit_match.group(1))
                elif text:
                    current.expected.append(text)
                continue
            if current is not None:
                current, start = None, self.first_line + offset
            lines.append(line)
        if any(line.strip() for line in lines) or not chunks:
            chunks.append(Chunk("\n".join(lines) + "\n", start))
        return chunks


def _parse_directives(lines: list[str], where: str) -> dict[str, str]:
    directives: dict[str, str] = {}
    for line in lines:
        match = _DIRECTIVE.match(line)
        if not match:
            continue
        name, _, value = match.group(1).strip().partition(" ")  # one directive a comment
        if name not in {"skip", "save", "background"}:
            raise DocFormatError(f"{where}: unknown doc-test directive {name!r}")
        if name in {"skip", "save"} and not value.strip():
            what = "reason" if name == "skip" else "file name"
            raise DocFormatError(f"{where}: `{name}` needs a {what}")
        directives[name] = value.strip()
    return directives


def parse(path: Path, text: str | None = None) -> list[Block]:
    """Every fenced block of ``path`` (or of ``text``, named after ``path``), in order."""
    source = path.read_text("utf-8") if text is None else text
    lines = source.splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        match = _FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        indent, fence, language = match.groups()
        above: list[str] = []
        back = index - 1
        while back >= 0 and _DIRECTIVE.match(lines[back]):
            above.insert(0, lines[back])
            back -= 1
        where = f"{os.path.relpath(path)}:{index + 1}"
        directives = _parse_directives(above, where)
        body: list[str] = []
        index += 1
        while index < len(lines) and not lines[index].strip().startswith(fence[0] * len(fence)):
            body.append(lines[index].removeprefix(indent))
            index += 1
        if index >= len(lines):
            raise DocFormatError(f"{where}: the code fence is never closed")
        block = Block(
            path,
            language.lower(),
            "\n".join(body) + "\n",
            first_line=index - len(body) + 1,
            skip=directives.get("skip"),
            save_as=directives.get("save"),
            background="background" in directives,
        )
        if block.language in JAVASCRIPT and block.skip is None and block.save_as is None:
            raise DocFormatError(
                f"{where}: a JavaScript block must say how the user saves it "
                "(<!-- doc-test: save example.mjs -->) or why it cannot run (skip REASON)"
            )
        if block.background and block.language not in SHELL:
            raise DocFormatError(f"{where}: `background` applies to shell blocks only")
        blocks.append(block)
        index += 1
    return blocks
