"""Writes docs/clip-flow-schedule.md: the learning rate of every update of ``clip_flow_small.yaml``, as the
training scheduler itself gives it (the optimizer and schedule are built from the parsed config).

    PYTHONPATH=src .venv/bin/python docs/clip_flow_schedule.py > docs/clip-flow-schedule.md
"""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from expotion.cli.train import ExpotionCLI
from expotion.data.clips import ShardDataModule
from expotion.solvers.optimization import Optimization, rates_per_update

CONFIG = Path(__file__).resolve().parents[1] / "lightning_configs" / "clip_flow_small.yaml"
SHOWN = (*range(0, 4000, 500), 3900, 3999, 4000, 4001, *range(4020, 4160, 20), 4159, 4160)
BAR = 40  # characters for the full rate


class ParseOnly(ExpotionCLI):
    def instantiate_classes(self) -> None:
        pass



def main() -> None:
    config = ParseOnly(None, ShardDataModule, run=False, args=["--config", str(CONFIG)]).config
    optim, trainer = Optimization(**config.model.init_args.optim), config.trainer
    lr = rates_per_update(optim, trainer.max_steps)
    print("# The learning rate of `clip_flow_small.yaml`\n")
    print(f"§5.1 as audiocraft reads it: {trainer.max_steps:,} updates (`trainer.max_steps`), validated every "
          f"{trainer.val_check_interval} (`trainer.val_check_interval`, one audiocraft epoch), AdamW at {optim.lr:g}, "
          f"a linear warmup from zero over {optim.warmup_steps:,} updates, then a cosine decay to zero at the last. "
          "Update *k* is taken at the rate shown for *k*; the row for "
          f"{trainer.max_steps:,} is the rate after the last update.\n")
    print("Generated from the training scheduler itself (`expotion.solvers.optimization.learning_rate_schedule` "
          "on the parsed config) by:\n")
    print("```bash\nPYTHONPATH=src .venv/bin/python docs/clip_flow_schedule.py > docs/clip-flow-schedule.md\n```\n")
    print("| update | learning rate | |\n|---:|---:|:---|")
    for step in SHOWN:
        bar = "█" * round(BAR * lr[step] / optim.lr)
        print(f"| {step:,} | {lr[step]:.4g} | `{bar or '·'}` |")


if __name__ == "__main__":
    main()
