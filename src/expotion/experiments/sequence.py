"""Several commands as one step: ``python -m expotion.experiments.sequence -- CMD1 ... -- CMD2 ...``.

Each runs after the previous one succeeded; the first failure ends the sequence with its status. The caption step
uses it to write one caption kind after the other into the cache.
"""
from __future__ import annotations

import subprocess
import sys


def split_commands(words: list[str]) -> list[list[str]]:
    commands: list[list[str]] = []
    for word in words:
        if word == "--":
            commands.append([])
        elif commands:
            commands[-1].append(word)
        else:
            raise SystemExit("usage: python -m expotion.experiments.sequence -- CMD ... [-- CMD ...]")
    return [c for c in commands if c]


def main(argv: list[str]) -> int:
    for command in split_commands(argv):
        print("$ " + " ".join(command), flush=True)
        status = subprocess.run(command).returncode
        if status:
            return status
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
