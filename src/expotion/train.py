"""Training entry point (LightningCLI).

    python -m expotion.train fit --config lightning_configs/tiny_cpu.yaml [--trainer.max_epochs=3 ...]
    python -m expotion.train fit --config ... --ckpt_path last      # resume exactly
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lightning.pytorch.cli import LightningCLI  # noqa: E402

from .data import ShardDataModule  # noqa: E402
from .known_warnings import silence_known_warnings  # noqa: E402
from .training import ExpotionModule  # noqa: E402


def main(args: list[str] | None = None) -> LightningCLI:
    silence_known_warnings()
    return LightningCLI(ExpotionModule, ShardDataModule, args=args, save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    main()
