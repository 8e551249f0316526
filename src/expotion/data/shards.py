"""The HDF5 feature cache: shard schema, atomic writing, validated reading, and ``inspect``.

Layout: ``<cache>/<split>/shard-NNNNN.h5``, one group per clip under
``/clips/<clip_id>`` holding ``codes`` (K, T) with a ``frame_rate`` attribute,
and ``marlin`` (+ ``marlin_mask``), ``synchformer``, ``raft``, ``clip``, ``farneback``, ``t5`` with
their :class:`~expotion.core.rates.StreamRate` as attributes where they are time
series (``fps``, ``t0``, and for Synchformer ``segment_len``/``segment_hop``). ``/text/generic`` holds
the generic prompt's text embedding. A shard is written under a temporary
name and renamed when complete, so a killed run never leaves a partial shard.
Every dataset carries HDF5's ``fletcher32`` checksum and the file is written
with the latest format (``libver="latest"``), whose metadata (object headers,
attributes, B-trees) is checksummed too; :func:`open_shard` reads every dataset
and attribute once, so a corrupt shard is refused by name before use.
No shard ever holds NaN or inf: :meth:`ShardWriter.add_clip` refuses them.
One run at a time writes a cache, or one run per node of a multi-node run:
see :func:`cache_lock`.

Usage: ``expotion cache inspect PATH`` (a shard or a directory).
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import socket
import sys
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import h5py
import numpy as np

from expotion.core.atomic import AtomicFile
from expotion.core.nodes import SINGLE_NODE, NodeShare
from expotion.core.rates import StreamRate

SCHEMA_VERSION = 2  # 2: Synchformer datasets record their segment layout (token times)
LOCK_NAME = ".lock"
SHARD_NAME = re.compile(r"^shard-\d{5,}\.h5$")  # a published shard, as shard_path names it
# ``.shard-NNNNN.tmp-<pid>-<random>-<host>.h5`` (see expotion.core.atomic.temporary_path): the shard being written,
# the process writing it and its machine (no host: a temporary of an earlier version, from this machine)
TEMPORARY = re.compile(r"^\.(?P<shard>shard-\d+)\.tmp-(?P<pid>\d+)-[0-9a-f]+(?:-(?P<host>.+))?\.h5$")


class CacheError(RuntimeError):
    """A shard is missing, truncated, or written with another schema."""


class NonFiniteError(ValueError):
    """A clip's features hold NaN or inf (after conversion to their stored dtype)."""


def shard_path(cache: Path, split: str, index: int) -> Path:
    return Path(cache) / split / f"shard-{index:05d}.h5"


@dataclass(frozen=True)
class StoredArray:
    """How a shard stores one array of a clip: its dtype (None: as given) and its dataset's attributes (its rate)."""

    dtype: type | None = None
    attrs: Mapping[str, float | int] = field(default_factory=dict)


class ShardWriter:
    """Write one shard under a temporary name; publish it atomically on :meth:`commit`."""

    def __init__(self, path: Path, attrs: dict):
        self.path = Path(path)
        self.target = AtomicFile(self.path)
        self.file = h5py.File(self.target.tmp, "w", libver="latest")
        self.file.attrs["schema_version"] = SCHEMA_VERSION
        for key, value in attrs.items():
            self.file.attrs[key] = value if isinstance(value, (str, int, float)) else json.dumps(value)
        self.file.create_group("clips")
        self.skipped: list[dict] = []
        self.coverage: list[dict] = []

    def add_clip(self, clip_id: str, arrays: dict[str, np.ndarray], attrs: dict,
                 layout: Mapping[str, StoredArray] = MappingProxyType({})) -> None:
        """Store one clip, each array as ``layout`` says (the caller's facts: e.g. the extractors' dtypes and rates;
        an array it does not name is stored as given); raise :class:`NonFiniteError` (writing nothing) if any array
        holds NaN or inf once converted."""
        none = StoredArray()
        with np.errstate(over="ignore"):  # an overflow becomes inf, which check_finite reports by stream
            stored = {name: value.astype(layout.get(name, none).dtype or value.dtype) for name, value in arrays.items()}
        check_finite(stored)
        group = self.file["clips"].create_group(clip_id)
        for name, value in attrs.items():
            group.attrs[name] = value if isinstance(value, (str, int, float)) else json.dumps(value)
        for name, value in stored.items():
            create_checked(group, name, value).attrs.update(layout.get(name, none).attrs)

    def add_text(self, key: str, hidden: np.ndarray) -> None:
        hidden = hidden.astype(np.float32)
        check_finite({f"text/{key}": hidden})
        create_checked(self.file.require_group("text"), key, hidden)

    def discard(self, clip_ids: Iterable[str]) -> None:
        """Remove clips already stored (a recording that failed part-way is skipped whole)."""
        for clip_id in clip_ids:
            del self.file["clips"][clip_id]

    def skip(self, clip_id: str, reason: str) -> None:
        self.skipped.append({"clip": clip_id, "reason": reason})

    def cover(self, recording: str, duration_s: float, clips: int, dropped_s: float,
              planned: int | None = None) -> None:
        """Record how much of a recording its written clips cover (the summary lists what was dropped):
        ``clips`` were written, ``dropped_s`` seconds are in none of them, ``planned`` clips fit its length
        (default: ``clips``)."""
        self.coverage.append({"recording": recording, "duration_s": round(duration_s, 3),
                              "planned_clips": clips if planned is None else planned, "clips": clips,
                              "dropped_s": round(dropped_s, 3)})

    def commit(self) -> Path:
        self.file.attrs["skipped"] = json.dumps(self.skipped)
        self.file.attrs["coverage"] = json.dumps(self.coverage)
        self.file.attrs["complete"] = True
        self.file.close()
        return self.target.commit()

    def abort(self) -> None:
        if self.file.id.valid:
            self.file.close()
        self.target.abort()


def create_checked(group: h5py.Group, name: str, value: np.ndarray) -> h5py.Dataset:
    """A dataset with a ``fletcher32`` checksum (chunked, as the filter needs; an empty array has no chunk)."""
    return group.create_dataset(name, data=value, fletcher32=value.size > 0 and value.ndim > 0)


def check_finite(arrays: dict[str, np.ndarray]) -> None:
    """Raise :class:`NonFiniteError` naming every floating-point stream that holds NaN or inf."""
    bad = [f"{name} ({int(np.size(a) - np.count_nonzero(np.isfinite(a)))} of {np.size(a)} values)"
           for name, a in arrays.items() if a.dtype.kind == "f" and not np.isfinite(a).all()]
    if bad:
        raise NonFiniteError(f"NaN or inf in {', '.join(bad)}; float16 streams also overflow above 65504")


@contextmanager
def cache_lock(cache: Path, on_wait: Callable[[str], None], node: NodeShare = SINGLE_NODE) -> Iterator[None]:
    """Hold the cache for one run, or for one node of a multi-node run; call ``on_wait`` once if it must wait.

    A single-node run holds ``<cache>/.lock`` alone. Node r of n holds ``.lock``
    shared with the other nodes (so nodes run together, and a single-node run
    and a multi-node run exclude each other) and ``.lock-node-r-of-n`` alone (so a
    second copy of the same node waits). The nodes of one run write disjoint
    shards, so no node ever waits for another. The locks are ``flock``-based: the
    kernel releases them when their holder dies, even by SIGKILL, so a killed run
    never leaves the cache locked. An exclusive lock's file names its holder while held.
    """
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    if node.count == 1:
        with file_lock(cache / LOCK_NAME, True, lambda holder: on_wait(
                f"{cache} is being written by another precompute run ({holder}); "
                "waiting for it to finish (Ctrl-C to stop)")):
            yield
        return
    with file_lock(cache / LOCK_NAME, False, lambda holder: on_wait(
            f"{cache} is being written by another precompute run ({holder}); waiting for it to finish before "
            f"{node} starts (Ctrl-C to stop)")), \
            file_lock(cache / f"{LOCK_NAME}-node-{node.rank}-of-{node.count}", True, lambda holder: on_wait(
                f"{cache}: {node} is already running ({holder}); waiting for it to finish (Ctrl-C to stop)")):
        yield


@contextmanager
def file_lock(path: Path, exclusive: bool, on_wait: Callable[[str], None]) -> Iterator[None]:
    """Hold an ``flock`` on ``path`` (exclusive or shared); ``on_wait(holder)`` once before waiting for it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    try:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            on_wait(os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process")
            fcntl.flock(fd, mode)
        except OSError as err:
            raise CacheError(f"{path}: cannot lock the cache ({err}); its file system must support flock "
                             "(local disks and NFSv4 do; Lustre when mounted with -o flock)") from err
        if exclusive:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        try:
            yield
        finally:
            if exclusive:
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)


def remove_stale_temporaries(cache: Path, owned: Collection[Path] = ()) -> list[Path]:
    """Delete partial shards that nobody is writing; a live run's temporaries are left alone.

    A temporary names the machine and process writing it. One from this machine
    is stale when its process is dead. One from another machine is stale only
    when its shard is in ``owned``: shards the caller's lock reserves to it (see
    :func:`cache_lock`), so no live process anywhere can be writing them.
    """
    host, owned = socket.gethostname(), {Path(p) for p in owned}
    removed = []
    for tmp in sorted(Path(cache).rglob(".shard-*.tmp-*.h5")):
        match = TEMPORARY.match(tmp.name)
        if match is None:
            continue
        if match["host"] in (None, host):
            stale = not pid_alive(int(match["pid"]))
        else:
            stale = tmp.with_name(f"{match['shard']}.h5") in owned
        if stale:
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def remove_shards_except(cache: Path, keep: Collection[Path]) -> list[Path]:
    """Delete every shard of ``cache`` not in ``keep``, then the split directories this leaves empty.

    Readers take every shard file under a split, so a shard the current plan no
    longer writes would add its clips again. Only a ``<cache>/<split>/shard-NNNNN.h5``
    whose ``split`` attribute names its directory is a shard this layout wrote:
    anything else (a user's file, a shard copied into another directory) stays.
    Returns the removed shards, then the removed directories.
    """
    cache, keep = Path(cache), {Path(p) for p in keep}
    shards = []
    for path in sorted(cache.glob("*/shard-*.h5")):
        if SHARD_NAME.match(path.name) and path not in keep and written_split(path) == path.parent.name:
            with contextlib.suppress(FileNotFoundError):  # another node's summary removed it first
                path.unlink()
                shards.append(path)
    directories = []
    for split in sorted({p.parent for p in shards} - {p.parent for p in keep}):
        with contextlib.suppress(OSError):  # it holds other files (kept), or a concurrent summary removed it
            split.rmdir()
            directories.append(split)
    return shards + directories


def written_split(path: Path) -> str | None:
    """The ``split`` a shard file records (whatever its schema version), or None if it is not a shard."""
    try:
        with h5py.File(path, "r") as f:
            return str(f.attrs.get("split", "")) or None
    except Exception:  # noqa: BLE001  (any corruption: then it is not a shard this layout can vouch for)
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


REBUILD = "rerun `make features` (or `expotion features`) to rebuild it"


def open_shard(path: str | os.PathLike, verify: bool = True) -> h5py.File:
    """Open a shard read-only, refusing truncated or corrupt files and other schema versions by name.

    With ``verify`` every dataset and attribute is read once (checking the checksums), so corruption is
    reported here, in one line, and not as an error deep inside training or generation.
    """
    path = Path(path)
    if not path.exists():
        raise CacheError(f"{path}: shard not found")
    try:
        f = h5py.File(path, "r")
    except Exception as err:  # noqa: BLE001  (h5py raises several types for a damaged file)
        raise CacheError(f"{path}: not a readable HDF5 shard (truncated or corrupt: {one_line(err)}); {REBUILD}") from err
    try:
        version, complete = f.attrs.get("schema_version"), bool(f.attrs.get("complete", False))
        if verify and version == SCHEMA_VERSION and complete:
            read_everything(f)
    except Exception as err:  # noqa: BLE001
        f.close()
        raise CacheError(f"{path}: corrupt shard ({one_line(err)}); {REBUILD}") from err
    if version != SCHEMA_VERSION:
        f.close()
        raise CacheError(f"{path}: schema_version {version}, but this version of expotion reads "
                         f"schema_version {SCHEMA_VERSION}; rebuild the cache with `make features`")
    if not complete:
        f.close()
        raise CacheError(f"{path}: shard was not completed")
    return f


def read_everything(f: h5py.File) -> None:
    """Read every attribute and dataset of ``f``: the checksums of each are checked as it is read."""
    def visit(_name: str, obj) -> None:
        dict(obj.attrs.items())
        if isinstance(obj, h5py.Dataset):
            obj[()]
    dict(f.attrs.items())
    f.visititems(visit)


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


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


def claim_clip_ids(owners: dict[str, Path], shard: Path, clip_ids: Iterable[str]) -> None:
    """Record ``shard`` as the holder of ``clip_ids`` in ``owners``; raise :class:`CacheError` if another holds one.

    Two shards with one clip id (a shard left from an older plan, or a copied
    file) would train on a clip twice, or leak a val/test clip into training.
    """
    for clip_id in clip_ids:
        other = owners.setdefault(clip_id, shard)
        if other != shard:
            raise CacheError(f"clip id '{clip_id}' is in two shards, {other} and {shard}; rerun `make features` "
                             "(a run removes the shards outside its plan) or delete the shard that does not belong")


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


def covered_seconds(name: str, ds: h5py.Dataset) -> dict:
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
    parser = argparse.ArgumentParser(prog="expotion cache", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
