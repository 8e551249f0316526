"""Files that appear complete or not at all.

A file is written under a temporary name beside its destination
(``.<stem>.tmp-<pid>-<random>-<host><suffix>``: concurrent writers never share
one, a temporary on a shared file system names the machine of its process,
and writers that pick the format from the suffix still can) and renamed over
the destination only when complete; a killed writer leaves a hidden
temporary, never a truncated file under the real name.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path


def temporary_path(path: Path) -> Path:
    """A fresh hidden name beside ``path`` (created by its writer, with the usual permissions)."""
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}-{secrets.token_hex(4)}-{socket.gethostname()}{path.suffix}")


class AtomicFile:
    """A temporary path to write, published at ``path`` by :meth:`commit` or removed by :meth:`abort`."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = temporary_path(self.path)

    def commit(self) -> Path:
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        self.tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path; when the block ends normally it becomes ``path``, otherwise it is deleted."""
    file = AtomicFile(path)
    try:
        yield file.tmp
    except BaseException:
        file.abort()
        raise
    file.commit()


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))
