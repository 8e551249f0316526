"""The HDF5 feature cache: shard schema, atomic writing, validated reading, and ``inspect``.

Layout: ``<cache>/<split>/shard-NNNNN.h5``, one group per clip under
``/clips/<clip_id>`` holding ``codes`` (K, T) with a ``frame_rate`` attribute,
and ``marlin`` (+ ``marlin_mask``), ``synchformer``, ``raft``, ``t5`` with
``fps``/``t0`` attributes where they are time series. ``/text/generic`` holds
the generic prompt's text embedding. A shard is written under a temporary
name and renamed when complete, so a killed run never leaves a partial shard.

Usage: ``python -m expotion.cache inspect PATH`` (a shard or a directory).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import h5py
import numpy as np

from .rates import DEFAULT_RATES, Rates

SCHEMA_VERSION = 1
FLOAT_FEATURES = ("marlin", "synchformer", "raft")  # stored as float16: half the disk, ample precision


class CacheError(RuntimeError):
    """A shard is missing, truncated, or written with another schema."""


def shard_path(cache: Path, split: str, index: int) -> Path:
    return Path(cache) / split / f"shard-{index:05d}.h5"


class ShardWriter:
    """Write one shard under a temporary name; publish it atomically on :meth:`commit`."""

    def __init__(self, path: Path, attrs: dict):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self.file = h5py.File(self.tmp, "w")
        self.file.attrs["schema_version"] = SCHEMA_VERSION
        for key, value in attrs.items():
            self.file.attrs[key] = value if isinstance(value, (str, int, float)) else json.dumps(value)
        self.file.create_group("clips")
        self.skipped: list[dict] = []

    def add_clip(self, clip_id: str, arrays: dict[str, np.ndarray], attrs: dict, rates: Rates = DEFAULT_RATES) -> None:
        group = self.file["clips"].create_group(clip_id)
        for name, value in attrs.items():
            group.attrs[name] = value if isinstance(value, (str, int, float)) else json.dumps(value)
        for name, value in arrays.items():
            dtype = np.float16 if name in FLOAT_FEATURES else value.dtype
            ds = group.create_dataset(name, data=value.astype(dtype))
            if name == "codes":
                ds.attrs["frame_rate"] = rates.codes_fps
            elif name in FLOAT_FEATURES:
                stream = rates.stream(name)
                ds.attrs["fps"], ds.attrs["t0"] = stream.fps, stream.t0

    def add_text(self, key: str, hidden: np.ndarray) -> None:
        self.file.require_group("text").create_dataset(key, data=hidden.astype(np.float32))

    def skip(self, clip_id: str, reason: str) -> None:
        self.skipped.append({"clip": clip_id, "reason": reason})

    def commit(self) -> Path:
        self.file.attrs["skipped"] = json.dumps(self.skipped)
        self.file.attrs["complete"] = True
        self.file.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        if self.file.id.valid:
            self.file.close()
        self.tmp.unlink(missing_ok=True)


def open_shard(path: str | os.PathLike) -> h5py.File:
    """Open a shard read-only, refusing truncated files and other schema versions by name."""
    path = Path(path)
    if not path.exists():
        raise CacheError(f"{path}: shard not found")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise CacheError(f"{path}: not a readable HDF5 shard (truncated or corrupt): {err}") from err
    version, complete = f.attrs.get("schema_version"), bool(f.attrs.get("complete", False))
    if version != SCHEMA_VERSION:
        f.close()
        raise CacheError(f"{path}: schema_version {version}, but this version of expotion reads "
                         f"schema_version {SCHEMA_VERSION}; rebuild the cache with `make features`")
    if not complete:
        f.close()
        raise CacheError(f"{path}: shard was not completed")
    return f


def shard_attrs(path: Path) -> dict | None:
    """The attributes of a finished shard, or None if it is absent or unusable."""
    try:
        with open_shard(path) as f:
            return {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
    except CacheError:
        return None


def list_shards(root: Path) -> list[Path]:
    root = Path(root)
    return [root] if root.is_file() else sorted(root.rglob("shard-*.h5"))


def summarize_shard(path: Path) -> dict:
    with open_shard(path) as f:
        clips = {}
        for clip_id, group in f["clips"].items():
            clips[clip_id] = {
                "attrs": {k: (v.item() if hasattr(v, "item") else v) for k, v in group.attrs.items()},
                "datasets": {
                    name: {"shape": list(ds.shape), "dtype": str(ds.dtype),
                           **{k: float(v) for k, v in ds.attrs.items()},
                           **covered_seconds(name, ds)}
                    for name, ds in group.items()
                },
            }
        return {
            "path": str(path),
            "schema_version": int(f.attrs["schema_version"]),
            "split": f.attrs.get("split", ""),
            "n_clips": len(clips),
            "skipped": json.loads(f.attrs.get("skipped", "[]")),
            "text": {k: list(v.shape) for k, v in f.get("text", {}).items()},
            "clips": clips,
        }


def covered_seconds(name: str, ds: h5py.Dataset) -> dict:
    """Seconds of video/audio a time series spans, to compare with the clip duration."""
    if name == "codes":
        return {"seconds": ds.shape[1] / float(ds.attrs["frame_rate"])}
    if "fps" in ds.attrs:
        return {"seconds": ds.shape[0] / float(ds.attrs["fps"])}
    return {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m expotion.cache", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    inspect = sub.add_parser("inspect", help="print a JSON summary of a shard or every shard under a directory")
    inspect.add_argument("path", type=Path)
    args = parser.parse_args(argv)
    shards = list_shards(args.path)
    if not shards:
        print(f"no shards under {args.path}", file=sys.stderr)
        return 1
    try:
        summary = [summarize_shard(p) for p in shards]
    except CacheError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(summary[0] if args.path.is_file() else summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
