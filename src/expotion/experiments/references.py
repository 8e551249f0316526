"""The test split's reference music, once for every row: ``python -m expotion.experiments.references SPLIT OUT``.

Each clip's original music, cut from its source as the precompute stage cut it, as ``<clip_id>.wav`` at
MusicGen's 32 kHz (what ``expotion generate --reference-dir`` writes; eval resamples per model anyway).
"""
from __future__ import annotations

import sys
from pathlib import Path

from expotion.data.clips import read_clips
from expotion.inference.outputs import write_reference

SAMPLE_RATE = 32000


def write_references(split: Path, out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    clips = read_clips(split)
    for clip in clips:
        write_reference(clip, out / f"{clip.clip_id}.wav", SAMPLE_RATE)
    return len(clips)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m expotion.experiments.references SPLIT OUT_DIR", file=sys.stderr)
        return 2
    print(f"{write_references(Path(argv[0]), Path(argv[1]))} reference clips written to {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
