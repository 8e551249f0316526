"""``expotion cache inspect PATH``: a JSON summary of a shard, or of every shard under a directory (each clip's
attributes, and each dataset's shape, dtype, rate and the seconds it spans)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import h5py

from expotion.core.rates import StreamRate
from expotion.data.shards import CacheError, list_shards, open_shard


def summarize_shard(path: Path) -> dict:
    """A shard's schema, split, skipped recordings and text states, and each clip's attributes and datasets."""
    with open_shard(path) as f:
        clips = {}
        for clip_id, group in f["clips"].items():
            clips[clip_id] = {
                "attrs": {k: (v.item() if hasattr(v, "item") else v) for k, v in group.attrs.items()},
                "datasets": {
                    name: {"shape": list(ds.shape), "dtype": str(ds.dtype),
                           **{k: float(v) for k, v in ds.attrs.items()},
                           **stream_seconds(name, ds)}
                    for name, ds in group.items() if isinstance(ds, h5py.Dataset)
                },
                # generated captions (expotion.data.captions): text, provenance, text states' shape
                "captions": {kind: {**{k: str(v) for k, v in entry.attrs.items()},
                                    "t5": list(entry["t5"].shape) if "t5" in entry else None}
                             for kind, entry in group.get("captions", {}).items()},
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


def stream_seconds(name: str, ds: h5py.Dataset) -> dict:
    """Seconds of video/audio a time series spans, to compare with the clip duration."""
    if name == "codes":
        return {"seconds": ds.shape[1] / float(ds.attrs["frame_rate"])}
    if "fps" in ds.attrs:
        return {"seconds": StreamRate.from_attrs(ds.attrs).end(ds.shape[0])}
    return {}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="cache_command", required=True)
    inspect = sub.add_parser("inspect", help="print a JSON summary of a shard or every shard under a directory")
    inspect.add_argument("path", type=Path)


def run(args: argparse.Namespace) -> int:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="expotion cache", description="the feature cache: inspect")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
