"""The precompute stage's account of a run: clips written and skipped, notes, coverage, and its report.

Everything is read back from the shards themselves (:func:`collect`), so a
resumed run, or the node that finishes a multi-node run, reports every shard.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from expotion.core.nodes import SINGLE_NODE, NodeShare
from expotion.core.rates import DEFAULT_RATES
from expotion.data.shards import list_shards


@dataclass
class Summary:
    written: Counter = field(default_factory=Counter)
    skipped: list[dict] = field(default_factory=list)
    notes: list[dict] = field(default_factory=list)
    coverage: list[dict] = field(default_factory=list)  # per recording: split, duration_s, planned_clips, clips, dropped_s
    splits: list[str] = field(default_factory=list)
    reused_shards: int = 0
    new_shards: int = 0
    clip_seconds: float = DEFAULT_RATES.clip_seconds
    node: NodeShare = SINGLE_NODE
    missing: list[str] = field(default_factory=list)  # shards of the plan not written yet (by other nodes)

    @property
    def empty_splits(self) -> list[str]:
        """Splits without a clip; only known once every shard is written."""
        return [] if self.missing else [s for s in self.splits if not self.written[s]]

    def report(self) -> str:
        lines = [f"clips written: {dict(self.written)} ({self.new_shards} new shards, {self.reused_shards} reused"
                 + (f" by {self.node})" if self.node.count > 1 else ")")]
        if self.missing:
            lines.append(f"{len(self.missing)} shards are not written yet (the other nodes write them): "
                         f"{', '.join(self.missing[:4])}{' ...' if len(self.missing) > 4 else ''}. The last node "
                         "to finish writes summary.json; or run the same command with --merge-summary then.")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)}:")
            lines += [f"  {s['clip']}: {s['reason']}" for s in self.skipped]
        if self.notes:
            lines.append(f"notes on {len(self.notes)} clips:")
            lines += [f"  {n['clip']}: {n['note']}" for n in self.notes]
        lost = [c for c in self.coverage if 0 < planned_clips(c) != c["clips"]]
        if lost:
            lines.append(f"clips skipped in {len(lost)} recordings (see the skipped list):")
            lines += [f"  {c['recording']}: {c['clips']} of {planned_clips(c)} clips written, {c['dropped_s']:.2f} s "
                      f"of {c['duration_s']:.2f} s in no clip" for c in lost]
        dropped = [c for c in self.coverage if c["clips"] and c["clips"] == planned_clips(c) and c["dropped_s"] > 0]
        if dropped:
            lines.append(f"dropped after the last whole clip, in {len(dropped)} recordings "
                         f"(--keep-tail adds a last clip that overlaps the one before):")
            lines += [f"  {c['recording']}: {c['dropped_s']:.2f} s of {c['duration_s']:.2f} s" for c in dropped]
        lines += [self.empty_split_message(s) for s in self.empty_splits]
        return "\n".join(lines)

    def empty_split_message(self, split: str) -> str:
        """Why ``split`` got no clips, with the remedy its skip reasons call for: a shorter --clip-seconds only
        when recordings were shorter than one clip."""
        short = [c for c in self.coverage if c["split"] == split and not planned_clips(c)]
        short_ids = {c["recording"] for c in short}
        others = [s for s in self.skipped if s.get("split") == split and s["clip"] not in short_ids]
        parts = [f"split '{split}' got no clips: every recording in it was skipped"]
        if short:
            parts.append(f"{len(short)} recording(s) shorter than one {self.clip_seconds:g} s clip (the longest lasts "
                         f"{max(c['duration_s'] for c in short):.2f} s): pass a shorter --clip-seconds (with make: "
                         f"FEATURE_ARGS=\"--clip-seconds N\") or fix the recordings")
        if others:
            parts.append(skip_reasons(others))
        return "; ".join(parts) + "."

    def to_json(self) -> dict:
        return {"written": self.written, "skipped": self.skipped, "notes": self.notes,
                "recordings": self.coverage, "empty_splits": self.empty_splits}


def planned_clips(coverage: dict) -> int:
    """How many clips a recording's length holds (shards written before this was recorded: its clips)."""
    return coverage.get("planned_clips", coverage["clips"])


def reason_kind(reason: str) -> str:
    """A skip reason without the file it names or the detail in parentheses, so reasons can be counted."""
    kind = reason.split(": ", 1)[-1]
    return re.sub(r" \([^()]*\)$", "", kind)


def skip_reasons(skipped: list[dict]) -> str:
    """The most common of ``skipped``'s reasons with its count, and where the full list is."""
    kinds = Counter(reason_kind(s["reason"]) for s in skipped)
    (kind, count), rest = kinds.most_common(1)[0], len(kinds) - 1
    example = next(s for s in skipped if reason_kind(s["reason"]) == kind)
    more = f", and {rest} other reason(s)" if rest else ""
    return (f"{len(skipped)} skipped, {count} for '{kind}' (e.g. {example['reason']}){more}; fix those recordings "
            f"or the manifest (the skipped list above and in summary.json gives each reason)")


def collect(summary: Summary, paths: list[Path]) -> None:
    """Gather written clips, skips and notes from the shards themselves (so resumed runs report fully)."""
    import h5py

    for path in paths:
        if not path.exists():
            continue
        with h5py.File(path, "r") as f:
            split = f.attrs["split"]
            summary.skipped += [{**s, "split": split} for s in json.loads(f.attrs.get("skipped", "[]"))]
            summary.coverage += [{**c, "split": split} for c in json.loads(f.attrs.get("coverage", "[]"))]
            for clip_id, group in f["clips"].items():
                summary.written[split] += 1
                summary.notes += [{"clip": clip_id, "note": n} for n in json.loads(group.attrs.get("notes", "[]"))]


def written_clip_ids(cache: Path) -> list[str]:
    """Sorted ids of every clip in the cache."""
    import h5py

    ids = []
    for path in list_shards(cache):
        with h5py.File(path, "r") as f:
            ids += list(f["clips"].keys())
    return sorted(ids)
