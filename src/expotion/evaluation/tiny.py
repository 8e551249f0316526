"""Write small randomly initialised evaluation checkpoints under their real names and layouts.

For plumbing checks only: every loader reads these through the same code path
as the released files, but the numbers they give mean nothing.

Usage: ``python -m expotion.evaluation.tiny WEIGHTS_DIR [--models vggish,passt,clap_music,...]``
"""
from __future__ import annotations

import argparse
from pathlib import Path

from . import clap, languagebind, models, passt, vggish

TINY_VIDEO = languagebind.TowerConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                      projection_dim=16, add_time_attn=True, num_frames=8)
TINY_AUDIO = languagebind.TowerConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                      projection_dim=16, num_mel_bins=112, target_length=1036)


def write(key: str, wdir: Path, seed: int = 0) -> Path:
    """One random checkpoint where the registered locator finds it in ``wdir``."""
    wdir = Path(wdir)
    if key == "vggish":
        return vggish.save_random(wdir / models.VGGISH_FILE, seed=seed)
    if key == "passt":
        return passt.save_random(wdir / models.PASST_FILE, seed=seed)
    if key == "clap_music":
        return clap.save_random(wdir / models.CLAP_REPO.split("/")[-1], seed=seed)
    if key == "languagebind_video":
        return languagebind.save_random(wdir / models.LANGUAGEBIND_VIDEO_REPO.split("/")[-1], TINY_VIDEO, seed=seed)
    if key == "languagebind_audio":
        return languagebind.save_random(wdir / models.LANGUAGEBIND_AUDIO_REPO.split("/")[-1], TINY_AUDIO, seed=seed)
    raise ValueError(f"unknown evaluation checkpoint {key!r}")


KEYS = ("vggish", "passt", "clap_music", "languagebind_video", "languagebind_audio")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("weights_dir", type=Path)
    parser.add_argument("--models", default=",".join(KEYS), help=f"comma-separated subset of {','.join(KEYS)}")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for key in (k.strip() for k in args.models.split(",") if k.strip()):
        print(f"{key}: {write(key, args.weights_dir, args.seed)}")


if __name__ == "__main__":
    main()
