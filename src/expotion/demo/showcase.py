"""The last step of ``make demo``: does the video matter? One held-out demo video, two ways, and two losses.

    python -m expotion.demo.showcase --manifest demo_data/manifest.csv --checkpoint runs/tiny_cpu/adaptor.pt \
        --control-run runs/tiny_cpu_zero_visual

The held-out clip gets music from the trained adaptor and from plain MusicGen on the same prompt and seed, each
muxed into the video with its alignment figure (``expotion generate --plot``). The validation loss of the demo run
is printed beside that of the control run trained on zeroed video features (``--model.zero_visual=true``).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from expotion.cli.main import main as cli_main
from expotion.core.tiny import DEFAULT_DIR
from expotion.data.manifest import load_manifest


def final_val_loss(run: Path) -> float | None:
    """The last ``val/loss`` the run logged, from its newest TensorBoard version (None when it logged none)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    versions = sorted((run / "lightning_logs").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    if not versions:
        return None
    events = EventAccumulator(str(versions[-1]), size_guidance={"scalars": 0})
    events.Reload()
    if "val/loss" not in events.Tags()["scalars"]:
        return None
    return events.Scalars("val/loss")[-1].value


def loss_line(name: str, run: Path, missing: str) -> str:
    loss = final_val_loss(run)
    return f"  {name:34s} {missing if loss is None else f'{loss:.3f}  ({run})'}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--manifest", type=Path, default=Path("demo_data/manifest.csv"))
    p.add_argument("--checkpoint", type=Path, default=Path("runs/tiny_cpu/adaptor.pt"))
    p.add_argument("--control-run", type=Path, default=None,
                   help="the run trained with --model.zero_visual=true, whose validation loss is compared")
    p.add_argument("--musicgen", default=str(DEFAULT_DIR / "musicgen_tiny"))
    p.add_argument("--tiny-dir", default=str(DEFAULT_DIR))
    p.add_argument("--out-dir", type=Path, default=Path("outputs/demo"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    held_out = [r for r in load_manifest(args.manifest) if r.split != "train"] or load_manifest(args.manifest)
    rec = held_out[0]
    face_box = ["--face-box", " ".join(map(str, rec.face_box))] if rec.face_box else []
    videos = {}
    for label, checkpoint in (("expotion", ["--checkpoint", str(args.checkpoint)]), ("musicgen", [])):
        stem = args.out_dir / f"{rec.id}-{label}"
        code = cli_main(["generate", "--video", str(rec.video), "--prompt", rec.caption, *checkpoint,
                         "--musicgen", args.musicgen, "--profile", "tiny", "--tiny-dir", args.tiny_dir,
                         "--seed", str(args.seed), "--out", f"{stem}.wav", "--mux", f"{stem}.mp4", "--plot", *face_box])
        if code != 0:
            return code
        videos[label] = stem
    print(f"\nThe held-out demo video {rec.id}, prompt \"{rec.caption}\", seed {args.seed}:")
    print(f"  with the adaptor:   {videos['expotion'].with_suffix('.mp4').resolve()}  "
          f"(alignment figure {videos['expotion'].with_suffix('.png').resolve()})")
    print(f"  plain MusicGen:     {videos['musicgen'].with_suffix('.mp4').resolve()}  "
          f"(alignment figure {videos['musicgen'].with_suffix('.png').resolve()})")
    print("Final validation loss (lower is better):")
    print(loss_line("with the video features", args.checkpoint.parent, "(no logged validation loss)"))
    if args.control_run is not None:
        print(loss_line("with them zeroed (the control)", args.control_run,
                        f"not trained yet: `make demo-control` trains it ({args.control_run}) and prints both"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
