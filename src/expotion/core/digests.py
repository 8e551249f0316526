"""Content digests of files, for keys that must change whenever what a file holds changes (eval's embedding cache,
an experiment's steps)."""
from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: Path) -> str:
    """The file's SHA-256, read in blocks so large audio and checkpoints never sit in memory whole."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
