"""Resumable steps: each records, beside its outputs, a key of its inputs and a digest of what it wrote.

A step's key is the sha256 of its command line, the contents of the files it reads (configs, the checkpoint, the
cache's files by name, size and modification time), and the version of Expotion's code (every source file of the
package). A rerun skips the step when the recorded key is the same and its outputs still have the recorded digest;
then it writes nothing. Otherwise the step's outputs are removed and it runs again.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import expotion
from expotion.core import atomic
from expotion.core.digests import sha256_file

RECORD_SUFFIX = ".step.json"
UNKEYED_OPTIONS = ("--workers",)  # options that change how fast a step runs, never what it writes
PACKAGE_DIR = Path(expotion.__file__).parent
CODE_EXCLUDED = ("app", "experiments")  # the browser app, and the runner itself (its commands are in the keys)


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else ([root] if root.is_file() else [])


def tree_digest(root: Path, content: bool = True) -> str:
    """The files under ``root`` by relative name and content (or, with ``content=False``, size and mtime: for a
    cache whose shards are too big to read on every run; any rewrite changes it)."""
    digest = hashlib.sha256()
    for path in files_under(Path(root)):
        stat = path.stat()
        digest.update(str(path.relative_to(root) if path != Path(root) else path.name).encode())
        digest.update((sha256_file(path) if content else f"{stat.st_size}:{stat.st_mtime_ns}").encode())
    return digest.hexdigest()


_CODE_VERSION: str | None = None


def code_version() -> str:
    """The digest of Expotion's source files (the app's and the experiment runner's left out)."""
    global _CODE_VERSION
    if _CODE_VERSION is None:
        digest = hashlib.sha256(expotion.__version__.encode())
        for path in sorted(PACKAGE_DIR.rglob("*.py")):
            relative = path.relative_to(PACKAGE_DIR)
            if relative.parts[0] not in CODE_EXCLUDED:
                digest.update(str(relative).encode() + path.read_bytes())
        _CODE_VERSION = digest.hexdigest()
    return _CODE_VERSION


def git_commit() -> str:
    """The commit of the code that ran (``+dirty`` with uncommitted changes), or ``unknown`` outside a checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(PACKAGE_DIR), *args], capture_output=True, text=True,
                              check=True).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def keyed_command(command: list[str]) -> list[str]:
    """The command without the options that do not change what it writes (nor the interpreter's path, which
    differs between a machine's checkouts of one environment)."""
    kept, skip = [], False
    for word in ("python" if word == sys.executable else word for word in command):
        if skip:
            skip = False
        elif word in UNKEYED_OPTIONS:
            skip = True
        elif not word.startswith(tuple(f"{o}=" for o in UNKEYED_OPTIONS)):
            kept.append(word)
    return kept


def step_key(command: list[str], inputs: dict[str, str]) -> str:
    doc = {"command": keyed_command(command), "inputs": inputs, "code": code_version()}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


@dataclass
class Step:
    """One command of the experiment: its outputs (files or folders), the digests of its inputs, and where its
    record and log go."""

    name: str
    command: list[str]
    outputs: list[Path]
    inputs: dict[str, str]
    record: Path
    log: Path
    content_digest: bool = True  # False for a cache: digested by size and mtime

    @property
    def key(self) -> str:
        return step_key(self.command, self.inputs)

    def outputs_digest(self) -> str:
        return hashlib.sha256("".join(tree_digest(p, self.content_digest) for p in self.outputs).encode()).hexdigest()

    def recorded(self) -> dict | None:
        try:
            return json.loads(self.record.read_text())
        except (OSError, ValueError):
            return None

    def is_done(self) -> bool:
        """The recorded key is this one, the step succeeded, and its outputs are as it left them."""
        record = self.recorded()
        return bool(record and record.get("status") == "ok" and record.get("key") == self.key
                    and record.get("outputs_digest") == self.outputs_digest())


class StepFailed(RuntimeError):
    """A step's command ended with a non-zero status; the message is its reason (the command's last error line)."""


ERROR_PREFIXES = ("error:", "expotion")  # how the commands' own one-line errors begin
ERROR_WORDS = ("not found", "no such file", "missing", "does not exist")


def last_error_line(text: str) -> str:
    """The line of a command's output that best says why it failed: its own one-line error, else a line naming a
    missing file, else the exception, else its last line."""
    lines = [line.strip().lstrip("- ") for line in text.splitlines() if line.strip()]
    tests = (lambda line: line.lower().startswith(ERROR_PREFIXES),
             lambda line: any(word in line.lower() for word in ERROR_WORDS) and not line.startswith("File "),
             lambda line: line.split(":", 1)[0].endswith(("Error", "Exception")))
    for test in tests:
        found = [line for line in lines if test(line)]
        if found:
            return found[-1]
    return lines[-1] if lines else "no output"


def python_command(*args: str) -> list[str]:
    """``expotion ARGS`` through this interpreter (the same environment, whatever is on PATH)."""
    return [sys.executable, "-m", "expotion.cli.main", *args]


def run_step(step: Step, clear: Iterable[Path] = (), env: dict | None = None) -> dict:
    """Run ``step`` unless it is done: the folders in ``clear`` are removed first, the command's output goes to
    its log, and the record is written when it ends (status ok or failed, with the reason)."""
    record = step.recorded()
    if step.is_done():
        return record
    for path in clear:
        shutil.rmtree(path, ignore_errors=True)
    step.log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(step.log, "w") as log:
        log.write("$ " + " ".join(step.command) + "\n")
        log.flush()
        done = subprocess.run(step.command, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    seconds = round(time.perf_counter() - started, 1)
    record = {"step": step.name, "command": step.command, "inputs": step.inputs, "key": step.key,
              "code": code_version(), "commit": git_commit(), "seconds": seconds, "log": str(step.log)}
    if done.returncode != 0:
        reason = f"exit status {done.returncode}: {last_error_line(step.log.read_text(errors='replace'))}"
        atomic.write_text(step.record, json.dumps({**record, "status": "failed", "reason": reason}, indent=2))
        raise StepFailed(reason)
    record = {**record, "status": "ok", "outputs_digest": step.outputs_digest()}
    atomic.write_text(step.record, json.dumps(record, indent=2))
    return record


def write_if_changed(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` (atomically) unless it already holds exactly that; True when written."""
    if path.is_file() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(path, data)
    return True
