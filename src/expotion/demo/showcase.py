"""The last step of ``make demo``: music for one held-out demo video, muxed into it.

    python -m expotion.demo.showcase --manifest demo_data/manifest.csv --checkpoint runs/tiny_cpu/adaptor.pt
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from expotion.cli import main as cli_main  # noqa: E402
from expotion.manifest import load_manifest  # noqa: E402
from expotion.tiny import DEFAULT_DIR  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--manifest", type=Path, default=Path("demo_data/manifest.csv"))
    p.add_argument("--checkpoint", type=Path, default=Path("runs/tiny_cpu/adaptor.pt"))
    p.add_argument("--musicgen", default=str(DEFAULT_DIR / "musicgen_tiny"))
    p.add_argument("--tiny-dir", default=str(DEFAULT_DIR))
    p.add_argument("--out-dir", type=Path, default=Path("outputs/demo"))
    args = p.parse_args(argv)
    held_out = [r for r in load_manifest(args.manifest) if r.split != "train"] or load_manifest(args.manifest)
    rec = held_out[0]
    out = args.out_dir / f"{rec.id}.mp4"
    code = cli_main(["generate", "--video", str(rec.video), "--prompt", rec.caption, "--checkpoint", str(args.checkpoint),
                     "--musicgen", args.musicgen, "--profile", "tiny", "--tiny-dir", args.tiny_dir,
                     "--out", str(args.out_dir / f"{rec.id}.wav"), "--mux", str(out),
                     *(["--face-box", " ".join(map(str, rec.face_box))] if rec.face_box else [])])
    if code == 0:
        print(f"\ndemo video with music generated for it: {out.resolve()}")
    return code


if __name__ == "__main__":
    sys.exit(main())
