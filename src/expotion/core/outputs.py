"""Writing outputs safely: never over one of the inputs (and, with :mod:`expotion.core.atomic`, never half-written)."""
from __future__ import annotations

import os
from pathlib import Path


class OutputError(ValueError):
    """An output path cannot be written safely; the message says why."""


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when ``a`` and ``b`` name one file: equal after resolving symlinks, or hard links to one inode."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    return a.exists() and b.exists() and os.path.samefile(a, b)


def file_stamp(path: Path) -> tuple[int, int] | None:
    """``(size, modification time in ns)``: what a cached result made from the file depends on, beside its path.

    Size and time, not a content hash: they are free to read for hours of video, and every tool that writes a
    file (or a copy that does not keep times) changes them. None for a file that cannot be read.
    """
    try:
        stat = Path(path).stat()
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


def prepare_output(path: str | os.PathLike, inputs: dict[str, Path], what: str,
                   suffixes: tuple[str, ...] = ()) -> Path:
    """Check that output ``path`` overwrites none of ``inputs`` (name -> path) and create its folder.

    ``suffixes`` (lower case, with the dot), when given, are the file types the writer can make: the
    writers pick the format from the name, so another one would fail only after the work is done.
    Raises :class:`OutputError` naming the option and the file, before any work is done.
    """
    path = Path(path)
    for name, source in inputs.items():
        if source is not None and same_file(path, source):
            raise OutputError(f"{what} {path} is the {name} {source}: writing it would destroy the {name}; "
                              "choose another output path")
    if suffixes and path.suffix.lower() not in suffixes:
        raise OutputError(f"{what} {path}: the file name must end in {' or '.join(suffixes)}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{what} {path}: cannot create its folder {path.parent} ({err.strerror})") from err
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder; give a file name")
    return path

