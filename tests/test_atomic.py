"""Atomic files: the destination holds the old content or the complete new one, never a partial write."""
import os

import pytest

from expotion.core.atomic import atomic_path, write_text


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = write_text(tmp_path / "out" / "a.json", "old")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert os.listdir(path.parent) == ["a.json"]


def test_write_publishes_with_the_usual_permissions(tmp_path):
    path = write_text(tmp_path / "b.txt", "new")
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert path.read_text() == "new"
    assert path.stat().st_mode == plain.stat().st_mode
    with atomic_path(path) as first, atomic_path(path) as second:
        assert first != second  # concurrent writers never share a temporary
        assert first.parent == path.parent  # the same filesystem, so the final rename is atomic
        assert first.suffix == ".txt" and first.name.startswith(".b.tmp-")  # hidden; writers may pick the format by suffix
        first.write_text("1")
        second.write_text("2")
    assert path.read_text() == "1"  # the outer block ends last
