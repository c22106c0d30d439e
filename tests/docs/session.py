"""Runs a document's blocks in order, as one bash session, and checks what they print.

The session is a generated bash script: ``set -euo pipefail``, then each chunk of each block
sourced in turn (so variables carry from block to block, as in the reader's terminal) with its
output sent to a file of its own. Python blocks run as scripts with the venv's Python; a block
marked ``background`` starts its last command in the background and waits until every address
it names accepts connections. At the end every background command gets SIGTERM and must exit 0.

Documented addresses and placeholders are replaced by live ones (:class:`Substitutions`); nothing
else in a block is changed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from .markdown_blocks import PYTHON, SHELL, Block, Chunk

SESSION_TIMEOUT = 300.0
WAIT_LISTEN_SECONDS = 60


class DocTestFailure(AssertionError):
    """A block did not run as written: the message names it (file:line) and shows its output."""


@dataclass
class Substitutions:
    """Literal replacements applied to every block before it runs, in order."""

    pairs: list[tuple[str, str]] = field(default_factory=list)
    # Ports a background command may listen on: waited for when the command names them.
    ports: set[int] = field(default_factory=set)

    def add(self, documented: str, live: str) -> None:
        self.pairs.append((documented, live))

    def apply(self, text: str) -> str:
        for documented, live in self.pairs:
            text = text.replace(documented, live)
        return text


@dataclass
class _Step:
    block: Block
    chunk: Chunk
    script: str  # what the driver runs (bash)
    out: Path


def _last_command(text: str) -> tuple[str, str]:
    """(everything before, the last command) of a shell block; continuation lines joined."""
    lines = text.rstrip("\n").splitlines()
    end = len(lines) - 1
    while end >= 0 and (not lines[end].strip() or lines[end].lstrip().startswith("#")):
        end -= 1
    start = end
    while start > 0 and lines[start - 1].rstrip().endswith("\\"):
        start -= 1
    return "\n".join(lines[:start]) + "\n", "\n".join(lines[start : end + 1]) + "\n"


def _normalize(text: str) -> str:
    return " ".join(text.split())


class DocSession:
    def __init__(
        self, workdir: Path, env: dict[str, str], substitutions: Substitutions, python: Path
    ) -> None:
        self.workdir = workdir
        self.env = env
        self.substitutions = substitutions
        self.python = python
        self.scratch = workdir / ".doc-test"
        self.scratch.mkdir(parents=True, exist_ok=True)

    def _steps(self, blocks: list[Block]) -> list[_Step]:
        steps: list[_Step] = []
        for number, block in enumerate(blocks):
            if block.skip is not None:
                continue
            if block.save_as is not None:
                target = self.workdir / block.save_as
                target.write_text(self.substitutions.apply(block.text), "utf-8")
                continue
            if block.language not in SHELL | PYTHON:
                continue
            chunks = block.chunks()
            if block.language in PYTHON:  # a script runs whole; all its expectations apply
                name = f"b{number:03d}"
                source = self.scratch / f"{name}.py"
                source.write_text(self.substitutions.apply(block.text), "utf-8")
                whole = Chunk(
                    block.text,
                    block.first_line,
                    [text for chunk in chunks for text in chunk.expected],
                    max(chunk.exit_code for chunk in chunks),
                )
                script = f"{shlex.quote(str(self.python))} {shlex.quote(str(source))}\n"
                steps.append(_Step(block, whole, script, self.scratch / f"{name}.out"))
                continue
            for index, chunk in enumerate(chunks):
                name = f"b{number:03d}c{index:02d}"
                text = self.substitutions.apply(chunk.text)
                if block.background and index == len(chunks) - 1:
                    before, command = _last_command(text)
                    script = before + self._background(name, command)
                else:
                    script = text
                steps.append(_Step(block, chunk, script, self.scratch / f"{name}.out"))
        return steps

    def _background(self, name: str, command: str) -> str:
        log = self.scratch / f"{name}.background"
        waits = "".join(
            f"__doc_wait {port} {shlex.quote(str(log))}\n"
            for port in sorted(self.substitutions.ports)
            if re.search(rf":{port}\b", command)
        )
        return (
            f"{command.rstrip()} >{shlex.quote(str(log))} 2>&1 </dev/null &\n"
            f"__doc_background+=($!)\n{waits}"
        )

    def _driver(self, steps: list[_Step]) -> str:
        lines = [
            "set -euo pipefail",
            f"cd {shlex.quote(str(self.workdir))}",
            "__doc_background=()",
            f"__doc_state={shlex.quote(str(self.scratch / 'state'))}",
            "__doc_stop() {",
            "  local pid rc",
            '  for pid in "${__doc_background[@]}"; do',
            '    kill -TERM "$pid" 2>/dev/null || true',
            '    rc=0; wait "$pid" || rc=$?',
            '    echo "background $pid exited $rc" >>"$__doc_state"',
            "  done",
            "}",
            "trap __doc_stop EXIT",
            "__doc_wait() {  # PORT LOG: until something accepts connections on 127.0.0.1:PORT",
            f"  for _ in $(seq 1 {WAIT_LISTEN_SECONDS * 10}); do",
            '    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0',
            '    kill -0 "${__doc_background[-1]}" 2>/dev/null || { cat "$2"; return 98; }',
            "    sleep 0.1",
            "  done",
            '  cat "$2"; return 98',
            "}",
        ]
        for number, step in enumerate(steps):
            chunk_file = self.scratch / f"step{number:03d}.sh"
            chunk_file.write_text(step.script, "utf-8")
            source = (
                f". {shlex.quote(str(chunk_file))} >{shlex.quote(str(step.out))} 2>&1 </dev/null"
            )
            lines.append(f'echo "start {number}" >>"$__doc_state"')
            if step.chunk.exit_code:
                lines += [
                    "set +e",
                    source,
                    "__doc_rc=$?",
                    "set -e",
                    f"[[ $__doc_rc -eq {step.chunk.exit_code} ]] || "
                    f'{{ echo "exit $__doc_rc" >>"$__doc_state"; exit 97; }}',
                ]
            else:
                lines.append(source)
            lines.append(f'echo "done {number}" >>"$__doc_state"')
        return "\n".join(lines) + "\n"

    def run(self, blocks: list[Block]) -> int:
        """Runs the blocks; raises DocTestFailure at the first one that fails. Returns how many
        blocks ran."""
        steps = self._steps(blocks)
        driver = self.scratch / "session.sh"
        driver.write_text(self._driver(steps), "utf-8")
        state = self.scratch / "state"
        state.write_text("")
        process = subprocess.Popen(
            ["bash", str(driver)],
            cwd=self.workdir,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            driver_output, _ = process.communicate(timeout=SESSION_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise DocTestFailure(self._report(steps, state, "the session timed out")) from None
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # anything a block left behind
        events = state.read_text().splitlines()
        done = {int(e.split()[1]) for e in events if e.startswith("done ")}
        if process.returncode != 0 or len(done) != len(steps):
            reason = f"exit status {process.returncode}"
            wrong_exit = [e for e in events if e.startswith("exit ")]
            if wrong_exit:
                documented = self._failed(steps, events).chunk.exit_code
                reason = f"{wrong_exit[-1]}, documented: exit {documented}"
            raise DocTestFailure(self._report(steps, state, reason, driver_output))
        for step in steps:
            printed = _normalize(step.out.read_text(errors="replace"))
            for expected in step.chunk.expected:
                if _normalize(self.substitutions.apply(expected)) not in printed:
                    raise DocTestFailure(
                        f"{step.block.name}:{step.chunk.first_line}: the output lacks the "
                        f"documented {expected!r}\n--- the commands:\n{step.script}"
                        f"--- their output:\n{step.out.read_text(errors='replace')[-4000:]}"
                    )
        for event in events:
            if event.startswith("background ") and not event.endswith(" exited 0"):
                raise DocTestFailure(f"a background command did not stop cleanly: {event}")
        return len({id(step.block) for step in steps})

    @staticmethod
    def _failed(steps: list[_Step], events: list[str]) -> _Step:
        started = [int(e.split()[1]) for e in events if e.startswith("start ")]
        return steps[started[-1]] if started else steps[0]

    def _report(self, steps: list[_Step], state: Path, reason: str, driver_output: str = "") -> str:
        events = state.read_text().splitlines()
        if not steps:
            return reason
        step = self._failed(steps, events)
        output = step.out.read_text(errors="replace") if step.out.exists() else ""
        return (
            f"{step.block.name}:{step.chunk.first_line}: the documented commands failed "
            f"({reason})\n--- the commands (as run):\n{step.script}"
            f"--- their output:\n{output[-4000:]}{driver_output[-2000:]}"
        )
