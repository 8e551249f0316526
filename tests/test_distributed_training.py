"""Both methods train under DDP: two CPU processes (gloo), three optimisation steps, the same weights on both ranks.

Each test runs ``python -m expotion.train fit ... --trainer.strategy=ddp --trainer.devices=2`` as a user would;
a callback of the test writes each rank's trained parameters when training ends.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
STEPS = 3
RANK_WEIGHTS = '''
import lightning as L
import torch


class RankWeights(L.Callback):
    """Writes this rank's trained parameters (and its step count) to ``<dirpath>/rank<N>.pt`` when training ends."""

    def __init__(self, dirpath: str):
        self.dirpath = dirpath

    def on_train_end(self, trainer, pl_module):
        weights = {k: v.detach().cpu().clone() for k, v in pl_module.trained_parameters().items()}
        torch.save({"weights": weights, "step": trainer.global_step}, f"{self.dirpath}/rank{trainer.global_rank}.pt")
'''


def ddp_config(tmp_path: Path, config: str, cache: Path, model: dict) -> Path:
    """``config`` on the test cache: 1 s crops, one clip per process and step, no export or audio samples."""
    cfg = yaml.safe_load((ROOT / "lightning_configs" / config).read_text())
    target = cfg["model"]["init_args"] if "init_args" in cfg["model"] else cfg["model"]
    for key, value in model.items():
        target[key] = {**target[key], **value} if isinstance(value, dict) else value
    cfg["data"].update(cache_dir=str(cache), crop_seconds=1.0, batch_size=1, num_workers=0)
    cfg["trainer"].update(default_root_dir=str(tmp_path / "run"), enable_progress_bar=False, max_steps=STEPS,
                          max_epochs=None, limit_val_batches=0, logger=False, enable_checkpointing=False)
    cfg["trainer"]["callbacks"] = [{"class_path": "rank_weights.RankWeights",
                                    "init_args": {"dirpath": str(tmp_path)}}]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    (tmp_path / "rank_weights.py").write_text(textwrap.dedent(RANK_WEIGHTS))
    return path


def train_on_two_processes(tmp_path: Path, config: Path) -> tuple[dict, dict]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "expotion.train", "fit", "--config", str(config),
           "--trainer.accelerator=cpu", "--trainer.strategy=ddp", "--trainer.devices=2"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return tuple(torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))


def assert_equal_and_trained(first: dict, second: dict, initial: dict[str, torch.Tensor]) -> None:
    assert first["step"] == second["step"] == STEPS
    assert first["weights"].keys() == second["weights"].keys() and first["weights"]
    for name, value in first["weights"].items():
        assert torch.equal(value, second["weights"][name]), f"{name} differs between the ranks"
    moved = [name for name, value in initial.items() if not torch.equal(value, first["weights"][name])]
    assert moved, "no trained parameter changed"


def test_clip_flow_trains_under_ddp_with_equal_weights_on_both_ranks(tmp_path, clip_flow_cache, tiny_profile_cfg):
    """decoder ``all`` with text ``none`` (clip_flow_small.yaml's choice) has T5's projection outside the trained
    set; with it inside, DDP stops at the second step."""
    from expotion.musicgen.loading import load_musicgen

    model = {"musicgen": tiny_profile_cfg.musicgen, "clip_flow": {"max_seconds": 2.0, "decoder": "all"},
             "optim": {"warmup_steps": 1}}
    first, second = train_on_two_processes(tmp_path, ddp_config(tmp_path, "clip_flow_tiny.yaml", clip_flow_cache,
                                                                  model))
    lm = dict(load_musicgen(tiny_profile_cfg.musicgen).lm.named_parameters())
    initial = {k: lm[k.removeprefix("lm.")].detach() for k in first["weights"] if k.startswith("lm.")}
    assert_equal_and_trained(first, second, initial)
    assert any(k.startswith("conditioner.") for k in first["weights"])


def test_expotion_trains_under_ddp_with_equal_weights_on_both_ranks(tmp_path, demo_cache, tiny_profile_cfg):
    model = {"musicgen": tiny_profile_cfg.musicgen, "adaptor": {"max_seconds": 2.0}}
    first, second = train_on_two_processes(tmp_path, ddp_config(tmp_path, "tiny_cpu.yaml", demo_cache[0], model))
    gates = {k: torch.zeros_like(v) for k, v in first["weights"].items() if k == "adaptor.gates"}
    assert gates, "the adaptor's gates are not among its trained parameters"
    assert_equal_and_trained(first, second, gates)  # the gates start at zero
