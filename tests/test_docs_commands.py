"""Every command line the docs show still parses: a renamed or misspelled flag, subcommand or make target fails here.

The commands come from the shell code blocks of README.md and every page under docs/. ``expotion …`` and ``python -m …`` /
``python bench/….py`` lines run in this process with ``--help`` appended, after their arguments were parsed against
the real parser (``--help`` alone would not catch a misspelled flag: argparse prints the help before it complains).
Training lines (``expotion train fit …``, LightningCLI) run with ``--print_config``, which validates every key.
``make …`` lines run as ``make -n`` (dry run, never installing), and the expotion commands they would run are
checked the same way.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SHELL_LANGUAGES = ("bash", "sh", "shell", "console")
PYTHON = re.compile(r"^(?:\S*/)?python3?(?:\.\d+)?$")


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block, fences matched in order."""
    blocks, lang, body = [], None, []
    for line in text.splitlines():
        fence = re.match(r"^\s*```(\S*)", line)
        if fence and lang is None:
            lang, body = fence.group(1), []
        elif fence:
            blocks.append((lang, "\n".join(body)))
            lang = None
        elif lang is not None:
            body.append(line)
    return blocks


def shell_lines(text: str) -> list[str]:
    """The command lines of the shell blocks in ``text``: continuations joined, comments and ``&&`` split off."""
    lines = []
    for lang, body in code_blocks(text):
        if lang not in SHELL_LANGUAGES:
            continue
        for line in re.sub(r"\\\n\s*", " ", body).splitlines():
            for part in re.split(r"\s&&\s", line):
                if shlex.split(part, comments=True):
                    lines.append(part.strip())
    return lines


def synopsis_words(line: str) -> list[str]:
    """Shell words of a documented line, with usage notation resolved: ``[--x V]`` → ``--x V``, ``a|b`` → ``a``,
    ``...`` → a placeholder value."""
    words = [w.strip("[]") for w in shlex.split(line, comments=True)]
    return ["X" if w == "..." else w if " " in w else w.split("|")[0] for w in words if w]


def documented_commands() -> list[tuple[str, str]]:
    """(where, line) of every command line in the docs that this test can check."""
    found = []
    for doc in DOCS:
        for line in shell_lines(doc.read_text()):
            words = synopsis_words(line)
            if words[0] == "srun":
                words = words[1:]
            if words[0] in ("expotion", "make") or (PYTHON.match(words[0]) and len(words) > 1
                                                    and (words[1] == "-m" or words[1].startswith("bench/"))):
                found.append((f"{doc.relative_to(ROOT)}", shlex.join(words)))
    return found


COMMANDS = documented_commands()


def entry_point(words: list[str]) -> tuple[str, str, list[str]]:
    """("module" or "path", its name, argv) of a python or expotion command."""
    if words[0] == "expotion":
        return "module", "expotion.cli.main", words[1:]
    if words[1] == "-m":
        return "module", words[2], words[3:]
    return "path", str(ROOT / words[1]), words[2:]


class Parsed(Exception):
    """Raised instead of running the command, once its arguments were parsed."""


def unrequired(parser: argparse.ArgumentParser) -> None:
    """Relax required options everywhere: the docs may leave some out (``generate --video … ``'s siblings)."""
    for action in parser._actions:
        action.required = False
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                unrequired(sub)


@contextlib.contextmanager
def parse_only():
    """Make the program's first ``parse_known_args`` check its arguments and stop: unknown words are an error."""
    original = argparse.ArgumentParser.parse_known_args
    depth = {"n": 0}

    def checked(self, args=None, namespace=None):
        if depth["n"]:
            return original(self, args, namespace)  # a subcommand's parser, called by the outer one
        depth["n"] += 1
        unrequired(self)
        self.exit_on_error = False

        def error(message):
            raise AssertionError(message)

        self.error = error
        for sub in (a for a in self._actions if isinstance(a, argparse._SubParsersAction)):
            for p in sub.choices.values():
                p.error = error
        _, extras = original(self, args, namespace)
        raise Parsed(extras)

    argparse.ArgumentParser.parse_known_args = checked
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_known_args = original


def run_program(kind: str, name: str, argv: list[str]) -> int:
    """Run a module or script as ``__main__`` with ``argv``; its exit status."""
    saved = sys.argv
    sys.argv = [name, *argv]
    try:
        if kind == "module":
            runpy.run_module(name, run_name="__main__", alter_sys=False)
        else:
            runpy.run_path(name, run_name="__main__")
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    finally:
        sys.argv = saved
    return 0


def check_program(words: list[str]) -> None:
    """Parse the command's arguments with the real parser, then run it with ``--help``."""
    kind, name, argv = entry_point(words)
    if argv[:1] == ["train"] or name == "expotion.cli.train":
        from expotion.cli.train import ExpotionCLI
        from expotion.cli.train import main as train

        argv = argv[1:] if argv[:1] == ["train"] else argv
        out = io.StringIO()

        def stop(cli):
            raise Parsed([])

        # every key validated (``--print_config`` alone prints before unknown keys are refused), no model built
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), pytest.MonkeyPatch.context() as mp:
            mp.setattr(ExpotionCLI, "before_instantiate_classes", stop)
            try:
                train(argv)
            except SystemExit as done:
                raise AssertionError(f"{shlex.join(words)}: exit {done.code}\n{out.getvalue()[-2000:]}") from None
            except Parsed:
                pass
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), pytest.raises(SystemExit) as done:
            train([*argv, "--print_config"])
        assert done.value.code in (0, None), f"{shlex.join(words)}:\n{out.getvalue()[-2000:]}"
        return
    with parse_only(), pytest.raises(Parsed) as parsed:
        run_program(kind, name, argv)
    assert parsed.value.args[0] == [], f"{shlex.join(words)}: unknown arguments {parsed.value.args[0]}"
    with contextlib.redirect_stdout(io.StringIO()) as out:
        status = run_program(kind, name, [*argv, "--help"])
    assert status == 0 and "usage:" in out.getvalue(), f"{shlex.join(words)} --help: status {status}"


def make_dry_run(words: list[str]) -> list[list[str]]:
    """``make -n`` of a documented make line: it must name real targets; the expotion commands it would run."""
    done = subprocess.run(["make", "-n", "-o", "install", "-o", "check-python", *words[1:]], cwd=ROOT, text=True,
                          capture_output=True, timeout=120, env={**os.environ, "MAKEFLAGS": ""})
    assert done.returncode == 0, f"{shlex.join(words)}: {done.stderr[-2000:]}"
    return expotion_commands(done.stdout)


def expotion_commands(script: str) -> list[list[str]]:
    """The ``python -m expotion.…`` commands of a shell script, without their redirections."""
    commands = []
    for line in re.sub(r"\\\n\s*", " ", script).splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words, redirected = [], False
        for token in [*lexer, ";"]:
            if token in (";", "&", "&&", "||", "|"):
                if len(words) > 2 and PYTHON.match(words[0]) and words[1] == "-m" and words[2].startswith("expotion."):
                    commands.append(["python", *words[1:]])
                words, redirected = [], False
            elif token in (">", ">>", ">&", "<") or redirected:
                if not redirected and words and words[-1].isdigit():
                    words.pop()  # the 2 of 2>&1
                redirected = True  # the rest of this command is where its output goes
            else:
                words.append(token)
    return commands


@pytest.mark.parametrize("where,line", COMMANDS, ids=[f"{w}:{line[:60]}" for w, line in COMMANDS])
def test_documented_command_parses(where, line, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    words = shlex.split(line)
    for command in make_dry_run(words) if words[0] == "make" else [words]:
        check_program(command)


def test_the_docs_show_commands_of_every_kind():
    kinds = {line.split()[0] if not PYTHON.match(line.split()[0]) else "python" for _, line in COMMANDS}
    assert {"expotion", "make", "python"} <= kinds
    assert any("train fit" in line or line.startswith("make train") for _, line in COMMANDS)
    assert len(COMMANDS) >= 30


def test_a_misspelled_flag_fails():
    """The check itself: a flag the parser does not know, or a training key LightningCLI does not know, fails."""
    with pytest.raises(AssertionError, match="unknown arguments"):
        check_program(["expotion", "generate", "--video", "v.mp4", "--promt", "jazz", "--out", "o.wav"])
    with pytest.raises(AssertionError):
        check_program(["expotion", "train", "fit", "--config", "lightning_configs/tiny_cpu.yaml",
                       "--model.zero_visul=true"])
