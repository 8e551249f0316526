"""Training system: cached text conditioning, data module, adaptor checkpoints, CLI, resume."""
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
import torch
import yaml

from expotion.cache import CacheError
from expotion.checkpoint import CheckpointMismatch, load_adaptor, read_adaptor, save_adaptor
from expotion.conditioning import text_condition
from expotion.data import ClipDataset, collate
from expotion.musicgen import load_musicgen, model_signature, text_hidden

ROOT = Path(__file__).resolve().parents[1]
STREAMS = ("marlin", "synchformer")


@pytest.fixture(scope="module")
def musicgen(tiny_profile_cfg):
    return load_musicgen(tiny_profile_cfg.musicgen)


def cached_text(mg, captions):
    hidden = text_hidden(mg, captions)
    longest = max(h.shape[0] for h in hidden)
    batch = torch.zeros(len(hidden), longest, hidden[0].shape[1])
    mask = torch.zeros(len(hidden), longest, dtype=torch.long)
    for i, h in enumerate(hidden):
        batch[i, : len(h)], mask[i, : len(h)] = torch.from_numpy(h), 1
    return batch, mask


def test_cached_text_conditioning_equals_musicgen_with_its_dropout(musicgen):
    """In train mode, over many batches, the cache path gives MusicGen's own logits, dropout included."""
    from audiocraft.modules.conditioners import ConditioningAttributes

    lm = musicgen.lm
    captions = ["slow piano", "fast drums and bass"]
    hidden, mask = cached_text(musicgen, captions)
    codes = torch.randint(0, lm.card, (2, 4, 20), generator=torch.Generator().manual_seed(0))
    lm.train()
    drops = 0
    try:
        for _ in range(12):
            state = lm.cfg_dropout.rng.get_state()
            attrs = [ConditioningAttributes(text={"description": c}) for c in captions]
            reference = lm.compute_predictions(codes, attrs).logits
            lm.cfg_dropout.rng.set_state(state)
            cond = text_condition(lm, hidden, mask, captions)
            drops += int(cond["description"][1].sum() == 0)
            ours = lm.compute_predictions(codes, [], condition_tensors=cond).logits
            valid = ~torch.isnan(reference)
            assert torch.equal(ours[valid], reference[valid])
    finally:
        lm.eval()
    assert 0 < drops < 12  # both branches were exercised (p = 0.2)
    cond = text_condition(lm, hidden, mask, captions)  # eval: never dropped
    assert cond["description"][1].sum() == mask.sum()


def test_dataset_crops_and_collates(demo_cache):
    cache, _ = demo_cache
    train = ClipDataset(cache / "train", STREAMS, crop_seconds=1.0, random_crop=True)
    assert len(train) == 4 and train.spec.dims["synchformer"] == 32 and train.spec.rates["marlin"].fps == 5
    starts = {float(train[0]["start_s"]) for _ in range(20)}
    assert len(starts) > 1 and all(0 <= s <= 1.0 for s in starts)
    item = train[1]
    assert item["codes"].shape == (4, 50) and item["codes"].dtype == torch.int64
    assert item["marlin"].shape == (10, 32) and item["synchformer"].shape == (40, 32)
    val = ClipDataset(cache / "val", STREAMS, crop_seconds=2.0, random_crop=False)
    assert {float(val[i]["start_s"]) for i in range(len(val))} == {0.0}
    items = [train[0], train[1]]
    items[1]["text"] = items[1]["text"][:0]  # an empty caption state pads to a zero mask
    batch = collate(items)
    assert batch["codes"].shape == (2, 4, 50)
    assert batch["text_mask"].tolist() == [[1], [0]] and batch["text"][1].abs().sum() == 0
    generic = ClipDataset(cache / "train", STREAMS, 1.0, False, generic_prompt=True)
    assert not torch.equal(generic[0]["text"], train[0]["text"])


def test_dataset_refuses_bad_shards(demo_cache, tmp_path):
    cache, _ = demo_cache
    shutil.copytree(cache / "val", tmp_path / "val")
    shard = next((tmp_path / "val").glob("shard-*.h5"))
    with h5py.File(shard, "a") as f:
        f.attrs["schema_version"] = 99
    with pytest.raises(CacheError, match=f"{shard.name}: schema_version 99"):
        ClipDataset(tmp_path / "val", STREAMS, 2.0, False)
    data = (cache / "val" / shard.name).read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(CacheError, match="truncated or corrupt"):
        ClipDataset(tmp_path / "val", STREAMS, 2.0, False)
    with pytest.raises(CacheError, match="no clip has"):
        ClipDataset(cache / "val", STREAMS, crop_seconds=30.0, random_crop=False)


def test_adaptor_checkpoint_round_trip_and_refusals(musicgen, demo_cache, tmp_path, tiny_profile_cfg):
    from expotion.adaptor import AdaptorConfig, ConditionAdaptor
    from expotion.embedding import VisualConfig
    from expotion.musicgen import TinyMusicGenConfig, save_tiny

    spec = ClipDataset(demo_cache[0] / "val", STREAMS, 2.0, False).spec
    sig = model_signature(musicgen)
    adaptor = ConditionAdaptor(musicgen.lm, AdaptorConfig(2, VisualConfig(), max_seconds=2.0), spec.dims, 50.0)
    with torch.no_grad():
        adaptor.gates.fill_(0.25)
    path = save_adaptor(tmp_path / "adaptor.pt", adaptor, sig, spec)
    assert torch.load(path, weights_only=True)["musicgen"]["num_layers"] == 4
    loaded, loaded_spec = load_adaptor(path, musicgen.lm, sig, spec)
    assert loaded_spec == spec
    assert all(torch.equal(v, adaptor.state_dict()[k]) for k, v in loaded.state_dict().items())
    other = load_musicgen(str(save_tiny(tmp_path / "mg6", cfg=TinyMusicGenConfig(num_layers=6))))
    with pytest.raises(CheckpointMismatch, match="num_layers: checkpoint 4 vs model 6"):
        load_adaptor(path, other.lm, model_signature(other))
    wrong = type(spec)({**spec.shapes, "marlin": (768,)}, spec.rates, spec.text_dim)
    with pytest.raises(CheckpointMismatch, match="expects 'marlin' features of shape"):
        load_adaptor(path, musicgen.lm, sig, wrong)
    (tmp_path / "junk.pt").write_bytes(b"")
    torch.save({"state_dict": {}}, tmp_path / "junk.pt")
    with pytest.raises(CheckpointMismatch, match="not an expotion adaptor checkpoint"):
        read_adaptor(tmp_path / "junk.pt")


def tiny_config(tmp_path: Path, demo_cache, tiny_profile_cfg, every_n_steps: int, batch_size: int = 2) -> Path:
    cfg = yaml.safe_load((ROOT / "lightning_configs" / "tiny_cpu.yaml").read_text())
    cfg["model"]["musicgen"] = tiny_profile_cfg.musicgen
    cfg["model"]["adaptor"]["max_seconds"] = 2.0
    cfg["data"].update(cache_dir=str(demo_cache[0]), crop_seconds=1.0, batch_size=batch_size, num_workers=0)
    cfg["trainer"].update(default_root_dir=str(tmp_path / "run"), enable_progress_bar=False)
    cfg["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "run")
    cfg["trainer"]["callbacks"][0]["init_args"].update(every_n_train_steps=every_n_steps, dirpath=str(tmp_path / "ckpt"))
    cfg["trainer"]["callbacks"][2]["init_args"].update(dirpath=str(tmp_path / "export"))
    cfg["trainer"]["callbacks"][3]["init_args"].update(every_n_epochs=1, seconds=0.5)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_cli_trains_logs_and_exports_adaptor(tmp_path, demo_cache, tiny_profile_cfg, musicgen):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from expotion.train import main

    config = tiny_config(tmp_path, demo_cache, tiny_profile_cfg, every_n_steps=2)
    cli = main(["fit", "--config", str(config), "--trainer.max_epochs=2"])
    assert cli.trainer.global_step == 4  # 4 train clips, batch 2, 2 epochs
    run_dir = Path(cli.trainer.log_dir)
    adaptor, _ = load_adaptor(tmp_path / "export" / "adaptor.pt", musicgen.lm, model_signature(musicgen))
    assert adaptor.gates.abs().sum() > 0  # the gates moved from zero
    events = EventAccumulator(str(run_dir), size_guidance={"audio": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"train/loss", "val/loss", "train/acc_q0", "gates/layer_02", "gates/layer_03"} <= set(tags["scalars"])
    assert any(t.startswith("lr-") for t in tags["scalars"])
    assert {"samples/generated", "samples/reference"} <= set(tags["audio"])
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert all(k.startswith("adaptor.") for k in ckpt["state_dict"])  # MusicGen is not copied into checkpoints


def test_training_killed_mid_epoch_resumes_at_the_same_step(tmp_path, demo_cache, tiny_profile_cfg):
    config = tiny_config(tmp_path, demo_cache, tiny_profile_cfg, every_n_steps=1, batch_size=1)  # 4 steps/epoch
    cmd = [sys.executable, "-m", "expotion.train", "fit", "--config", str(config), "--trainer.max_epochs=50"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "ckpt" / "last.ckpt"
    deadline = time.time() + 240
    step = 0
    while time.time() < deadline and step < 3:
        time.sleep(0.5)
        if last.exists():
            try:
                step = torch.load(last, weights_only=False)["global_step"]
            except Exception:  # noqa: BLE001 - the file may be mid-write
                step = 0
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = torch.load(last, weights_only=False)
    killed_at = saved["global_step"]
    assert killed_at >= 3
    before = set((tmp_path / "ckpt").glob("epoch=*.ckpt"))
    result = subprocess.run(cmd[:-1] + [f"--trainer.max_steps={killed_at + 2}", "--ckpt_path", str(last)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = torch.load(last, weights_only=False)
    assert resumed["global_step"] == killed_at + 2
    assert resumed["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["processed"] == killed_at + 2
    new_steps = sorted(int(re.search(r"step=(\d+)", p.stem).group(1))
                       for p in set((tmp_path / "ckpt").glob("epoch=*.ckpt")) - before)
    assert new_steps == [killed_at + 1, killed_at + 2]  # continued from the killed step: none redone or skipped


def test_every_config_parses(tmp_path):
    from lightning.pytorch.cli import LightningCLI

    from expotion.data import ShardDataModule
    from expotion.training import ExpotionModule

    class ParseOnly(LightningCLI):
        def instantiate_classes(self) -> None:
            pass

    configs = ROOT / "lightning_configs"
    paper, large = configs / "paper.yaml", configs / "musicgen_large.yaml"
    combos = [[configs / "tiny_cpu.yaml"], [paper]]
    combos += [[paper, configs / f"musicgen_{s}.yaml"] for s in ("small", "medium", "large")]
    combos += [[paper, large, a] for a in sorted((configs / "ablations").glob("*.yaml"))]
    combos += [[paper, large, configs / "ddp_4gpu.yaml"]]
    for files in combos:
        args = [x for f in files for x in ("--config", str(f))]
        cli = ParseOnly(ExpotionModule, ShardDataModule, run=False, args=args)
        cfg = cli.config
        assert cfg.model.adaptor.n_adapted >= 1
        if files[-1].name == "musicgen_small.yaml":
            assert cfg.model.musicgen == "facebook/musicgen-small" and cfg.model.adaptor.n_adapted == 24
            assert cfg.trainer.logger.init_args.name == "musicgen_small" and cfg.model.lr == 0.01  # base kept
        if files[-1].name == "face.yaml":
            assert cfg.model.adaptor.visual.face and cfg.model.adaptor.visual.motion is None
            assert cfg.model.adaptor.n_adapted == 48  # the overlay keeps the size config's other fields
        if files[-1].name == "generic_prompt.yaml":
            assert cfg.data.generic_prompt
        if files[-1].name == "ddp_4gpu.yaml":
            assert cfg.trainer.devices == 4 and cfg.trainer.strategy == "ddp" and cfg.data.batch_size == 10
