"""The CLIP + flow method in the shared pipeline: precompute, LightningCLI training with EMA, export, generation."""
from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from conftest import CLIP_S, moving_frames, write_video

from expotion.data.clips import ClipDataset, FeatureSpec, read_clips
from expotion.inference import ModelSettings, SamplingSettings, generate_for_cache, generate_for_video, load_models
from expotion.inference.batch import check_clip, plan_batches
from expotion.methods.clipflow.checkpoint import build_clip_flow, save_clip_flow
from expotion.methods.clipflow.conditioner import ClipFlowConditioner, ClipFlowConfig
from expotion.methods.clipflow.memory import trained_decoder
from expotion.methods.expotion.export import build_adaptor
from expotion.musicgen.loading import load_musicgen, model_signature
from expotion.musicgen.windows import GenerationError, generate_tokens, generation_windows
from expotion.solvers.export import CheckpointMismatch, read_adaptor

ROOT = Path(__file__).resolve().parents[1]
STREAMS = ("clip", "farneback")
SMALL = {"visual_layers": 1, "motion_layers": 1, "heads": 2, "tokens_per_frame": 2}


@pytest.fixture(scope="module")
def cache(clip_flow_cache) -> Path:
    return clip_flow_cache


@pytest.fixture(scope="module")
def musicgen(tiny_profile_cfg):
    return load_musicgen(tiny_profile_cfg.musicgen)


@pytest.fixture(scope="module")
def spec(cache):
    return ClipDataset(cache / "val", STREAMS, CLIP_S, False).spec


def checkpoint_for(path: Path, musicgen, spec, seed: int = 0, **cfg) -> Path:
    torch.manual_seed(seed)
    config = ClipFlowConfig(**{**SMALL, "max_seconds": CLIP_S, **cfg})
    conditioner = ClipFlowConditioner(config, spec.shapes, musicgen.lm.dim, musicgen.frame_rate)
    trained = trained_decoder(musicgen.lm, config.decoder, config.text)
    decoder = {name: p + 0.01 * torch.randn_like(p) for name, p in trained.items()}
    return save_clip_flow(path, conditioner, decoder, model_signature(musicgen), spec)


def test_precompute_writes_clip_and_farneback_streams(cache, spec, tiny_profile_cfg):
    from expotion.core.rates import DEFAULT_RATES as R

    assert spec.shapes == {"clip": (17, 32), "farneback": (112, 112)}
    assert spec.rates == {"clip": R.clip, "farneback": R.farneback}
    item = ClipDataset(cache / "train", STREAMS, CLIP_S, False)[0]
    assert item["clip"].shape == (R.clip_frames(CLIP_S), 17, 32) == (4, 17, 32)
    assert item["farneback"].shape == (R.farneback_flows(CLIP_S), 112, 112) == (7, 112, 112)
    assert float(item["farneback"].max()) > 0.5  # the performer moves


def test_windowed_clip_and_farneback_equal_one_pass(tmp_path, tiny_profile_cfg):
    """A long video's clip and farneback streams, read window by window, equal one pass over it bit for bit."""
    from expotion.data.media import iter_clip_frames
    from expotion.extractors.bank import Extractors
    from expotion.extractors.long_video import plan_windows, video_features

    ex = Extractors(tiny_profile_cfg, STREAMS)
    video = write_video(tmp_path / "v.mp4", moving_frames(int(5.3 * 25), 96, 128), fps=25)
    (_, frames), = iter_clip_frames(video, [(0.0, 5.3)], ex.cfg.max_short_side)
    whole = ex.video_features(frames, 5.3)
    assert [w.start_s for w in plan_windows(5.3, 1.6, ex.rates, ex.cfg.face_detect_fps, STREAMS)] == [0.0, 1.5, 3.0]
    stitched = video_features(ex, video, 5.3, window_s=1.6)  # the grid of 2 and 4 fps is 0.5 s
    assert whole.arrays["clip"].shape == (10, 17, 32) and whole.arrays["farneback"].shape == (20, 112, 112)
    for name, expected in whole.arrays.items():
        assert np.array_equal(stitched.arrays[name], expected), name


def cli_config(tmp_path: Path, cache: Path, tiny_profile_cfg, **clip_flow) -> Path:
    cfg = yaml.safe_load((ROOT / "lightning_configs" / "clip_flow_tiny.yaml").read_text())
    model = cfg["model"]["init_args"]
    model["musicgen"] = tiny_profile_cfg.musicgen
    model["clip_flow"].update(max_seconds=CLIP_S, **clip_flow)
    model["optim"]["warmup_steps"] = 2  # the runs here are 4 updates
    cfg["data"].update(cache_dir=str(cache), crop_seconds=1.0, batch_size=2)
    cfg["trainer"].update(default_root_dir=str(tmp_path / "run"), enable_progress_bar=False, max_epochs=2)
    cfg["trainer"]["callbacks"] = [
        {"class_path": "lightning.pytorch.callbacks.EMAWeightAveraging", "init_args": {"decay": 0.5}},
        {"class_path": "expotion.solvers.callbacks.RunCheckpoint",
         "init_args": {"save_last": True, "dirpath": str(tmp_path / "ckpt")}},
        {"class_path": "expotion.solvers.callbacks.MethodExport", "init_args": {"dirpath": str(tmp_path / "export")}},
        {"class_path": "expotion.solvers.callbacks.AudioSamples", "init_args": {"every_n_epochs": 1, "seconds": 0.5}},
    ]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_cli_trains_with_ema_and_exports_the_average(tmp_path, cache, tiny_profile_cfg, musicgen):
    """LightningCLI picks the method from model.class_path; checkpoints hold only what trains; the export at the end
    holds the EMA weights; the export loads back for generation."""
    from expotion.cli.train import main

    config = cli_config(tmp_path, cache, tiny_profile_cfg, decoder="cross_attention")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = main(["fit", "--config", str(config)])
    assert not [w for w in caught if "WeightAveraging" in str(w.message)]  # a known, harmless one: silenced
    assert type(cli.model).__name__ == "ClipFlowModule" and cli.trainer.global_step == 4  # 4 clips, batch 2, 2 epochs
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    lm_keys = [k for k in ckpt["state_dict"] if k.startswith("lm.")]
    assert lm_keys and all(".cross_attention." in k or ".norm_cross." in k for k in lm_keys)
    assert set(ckpt["state_dict"]) == set(ckpt["current_model_state"]) == cli.model.trained_keys()

    payload = read_adaptor(tmp_path / "export" / "clip_flow.pt")
    assert payload["method"] == "clip_flow" and payload["config"]["decoder"] == "cross_attention"
    averaged, current = ckpt["state_dict"], ckpt["current_model_state"]
    name = "conditioner.projection.proj.weight"
    assert torch.equal(payload["state_dict"][name.removeprefix("conditioner.")], averaged[name])
    assert not torch.equal(averaged[name], current[name])

    fresh = load_musicgen(tiny_profile_cfg.musicgen)
    conditioner, loaded_spec = build_clip_flow(tmp_path / "export" / "clip_flow.pt", payload, fresh)
    weight = "transformer.layers.0.cross_attention.in_proj_weight"
    assert torch.equal(dict(fresh.lm.named_parameters())[weight], averaged[f"lm.{weight}"])
    assert loaded_spec.shapes == {"clip": (17, 32), "farneback": (112, 112)}
    with pytest.raises(CheckpointMismatch, match="clip_flow"):
        build_adaptor(tmp_path / "x.pt", payload, fresh.lm, model_signature(fresh))


def test_zero_visual_feeds_zeros(tmp_path, cache, tiny_profile_cfg):
    from expotion.data.clips import collate
    from expotion.methods.clipflow.module import ClipFlowModule

    module = ClipFlowModule(tiny_profile_cfg.musicgen, ClipFlowConfig(**SMALL), zero_visual=True)
    batch = collate([ClipDataset(cache / "val", STREAMS, CLIP_S, False)[0]])
    assert all(torch.count_nonzero(v) == 0 for v in module.visual_inputs(batch).values())
    assert torch.count_nonzero(batch["farneback"]) > 0


def test_the_pooled_loss_is_eq_1_one_mean_over_every_codebook_and_step(cache, tiny_profile_cfg):
    from expotion.data.clips import collate
    from expotion.methods.clipflow.module import ClipFlowModule
    from expotion.musicgen.objective import ObjectiveConfig, codebook_cross_entropy

    dataset = ClipDataset(cache / "val", STREAMS, CLIP_S, False)
    module = ClipFlowModule(tiny_profile_cfg.musicgen, ClipFlowConfig(**SMALL), objective=ObjectiveConfig(pooled=True))
    module.eval()
    module.build(dataset)
    batch = collate([dataset[0], dataset[1]])
    with torch.no_grad():
        out = module(batch)
        loss = module.training_step(batch, 0)
    pooled = torch.nn.functional.cross_entropy(out.logits[out.mask], batch["codes"][out.mask])
    assert loss.item() == pytest.approx(pooled.item(), abs=1e-6)
    assert abs(loss.item() - codebook_cross_entropy(out.logits, batch["codes"], out.mask)[0].item()) > 1e-6


def test_generate_single_long_and_batch(tmp_path, cache, spec, musicgen, tiny_profile_cfg, caplog):
    ckpt = checkpoint_for(tmp_path / "adaptor.pt", musicgen, spec)
    settings = ModelSettings(checkpoint=ckpt, profile="tiny", tiny_dir=Path(tiny_profile_cfg.musicgen).parent,
                             device="cpu")
    models = load_models(settings)
    assert isinstance(models.conditioning, ClipFlowConditioner)
    video = write_video(tmp_path / "v.mp4", moving_frames(115), fps=25)  # 4.6 s: four windows of 2 s every 1 s
    with caplog.at_level("INFO", "expotion"):
        result = generate_for_video(models, video, None, tmp_path / "out.wav", mux=tmp_path / "out.mp4",
                                    sampling=SamplingSettings(seed=1, top_k=20))
    assert "trained without text" in caplog.text
    assert sf.info(result.wav).duration == pytest.approx(4.6, abs=1e-4) and result.mux.exists()

    batch = generate_for_cache(models, cache / "val", tmp_path / "gen", reference_dir=tmp_path / "ref",
                               sampling=SamplingSettings(top_k=20))
    assert batch.written == ["demo-002-000", "demo-002-001"] and not batch.skipped
    assert sf.info(tmp_path / "gen" / "demo-002-000.wav").duration == pytest.approx(CLIP_S)

    concat = load_models(replace(settings, checkpoint=checkpoint_for(tmp_path / "concat.pt", musicgen, spec,
                                                                     text="concat")))
    with pytest.raises(GenerationError, match="prompt is empty"):
        generate_for_video(concat, video, None, tmp_path / "c.wav")


@pytest.mark.parametrize("text", ["none", "concat"])
def test_batch_mode_wavs_do_not_depend_on_the_batch_size(tmp_path, cache, spec, musicgen, tiny_profile_cfg, text):
    """Batched CLIP + flow generation: each clip's wav is the one it gets alone; without text, captions
    (even empty ones) neither split batches nor skip clips."""
    models = load_models(ModelSettings(checkpoint=checkpoint_for(tmp_path / "a.pt", musicgen, spec, text=text),
                                       profile="tiny", tiny_dir=Path(tiny_profile_cfg.musicgen).parent, device="cpu"))
    clips = read_clips(cache / "val", STREAMS)
    odd = [replace(clips[0], caption=""), replace(clips[1], caption="a caption of many more words than the other")]
    if text == "none":
        assert [len(b) for b in plan_batches(models, odd, 8)] == [2]
        assert check_clip(odd[0], tmp_path, None, models.spec, text=False) is None
    assert "prompt is empty" in check_clip(odd[0], tmp_path, None, models.spec)
    wavs = {}
    for size in (1, 2):
        result = generate_for_cache(models, cache / "val", tmp_path / f"b{size}", batch_size=size,
                                    sampling=SamplingSettings(seed=3, top_k=20))
        assert result.batches == 2 // size and result.written == ["demo-002-000", "demo-002-001"]
        wavs[size] = {clip: sf.read(tmp_path / f"b{size}" / f"{clip}.wav")[0] for clip in result.written}
    for clip, wav in wavs[1].items():
        np.testing.assert_array_equal(wav, wavs[2][clip])
    assert not np.array_equal(*wavs[2].values())  # each clip has its own video and seed


def test_each_generation_window_gets_the_memory_of_its_span(musicgen, spec):
    """Windowed generation: every lm.generate call sees, in its conditional half, Z of exactly its window."""
    torch.manual_seed(0)
    conditioner = ClipFlowConditioner(ClipFlowConfig(**SMALL, max_seconds=CLIP_S), spec.shapes, musicgen.lm.dim,
                                      musicgen.frame_rate).eval()
    feats = {"clip": torch.randn(1, 10, 17, 32), "farneback": torch.rand(1, 19, 112, 112)}  # 5 s of video
    seen = []

    def record(_module, args, _out):  # the conditional half's memory, once per lm.generate call
        memory = args[1][:1]
        if not seen or memory.shape != seen[-1].shape or not torch.equal(memory, seen[-1]):
            seen.append(memory.clone())

    hook = musicgen.lm.transformer.layers[0].cross_attention.register_forward_hook(record)
    try:
        generate_tokens(musicgen, [None], 5.0, conditioner, feats, spec.rates, seed=0, top_k=20)
    finally:
        hook.remove()
    windows = generation_windows(5.0, CLIP_S, CLIP_S / 2, musicgen.frame_rate)
    assert len(windows) == len(seen) == 4
    with torch.no_grad():
        for window, memory in zip(windows, seen):
            start = torch.tensor([window.offset / musicgen.frame_rate])
            expected = conditioner(feats, spec.rates, start, window.length / musicgen.frame_rate)
            torch.testing.assert_close(memory, expected, rtol=0, atol=1e-6)


def test_mismatched_features_and_methods_are_refused(tmp_path, musicgen, spec, tiny_profile_cfg):
    real = FeatureSpec({"clip": (50, 768), "farneback": (112, 112)}, spec.rates, spec.text_dim)  # the real CLIP's tokens
    models = load_models(ModelSettings(checkpoint=checkpoint_for(tmp_path / "real.pt", musicgen, real), profile="tiny",
                                       tiny_dir=Path(tiny_profile_cfg.musicgen).parent, device="cpu"))
    video = write_video(tmp_path / "v.mp4", moving_frames(50), fps=25)
    with pytest.raises(CheckpointMismatch, match=r"'clip' features of shape \(50, 768\).*\(17, 32\)"):
        generate_for_video(models, video, None, tmp_path / "o.wav")
    payload = read_adaptor(checkpoint_for(tmp_path / "a.pt", musicgen, spec))
    payload["decoder"] = {"transformer.layers.0.cross_attention.in_proj_weight": torch.zeros(3, 3)}
    with pytest.raises(CheckpointMismatch, match="do not fit"):
        build_clip_flow(tmp_path / "b.pt", payload, load_musicgen(tiny_profile_cfg.musicgen))
    payload["method"] = "expotion"
    with pytest.raises(CheckpointMismatch, match="'expotion' method"):
        build_clip_flow(tmp_path / "c.pt", payload, musicgen)


def test_configs_parse_with_the_paper_settings():
    """clip_flow_small.yaml carries §5.1's numbers; the no-motion overlay changes only the motion stream."""
    from expotion.cli.train import ExpotionCLI
    from expotion.data.clips import ShardDataModule
    from expotion.solvers.optimization import Optimization

    class ParseOnly(ExpotionCLI):
        def instantiate_classes(self) -> None:
            pass

    configs = ROOT / "lightning_configs"
    small = ParseOnly(None, ShardDataModule, run=False, args=["--config", str(configs / "clip_flow_small.yaml")]).config
    model = small.model.init_args
    assert small.model.class_path == "expotion.methods.clipflow.module.ClipFlowModule"
    assert (model.optim.lr, model.optim.warmup_steps, small.data.batch_size) == (3.5e-5, 4000, 64)
    # 10 audiocraft epochs of 416 updates, validated after each, whatever the size of the data
    assert (small.trainer.max_steps, small.trainer.max_epochs, small.trainer.val_check_interval,
            small.trainer.check_val_every_n_epoch) == (4160, None, 416, None)
    optim = Optimization(**model.optim)  # audiocraft's MusicGen solver's AdamW and clipping
    assert (optim.betas, optim.eps, optim.weight_decay, optim.max_norm) == ((0.9, 0.95), 1e-8, 0.1, 1.0)
    assert model.clip_flow.decoder == "all" and model.clip_flow.text == "none" and model.clip_flow.motion
    assert model.objective.pooled  # Eq. 1
    ema = small.trainer.callbacks[0]
    assert ema.class_path.endswith("EMAWeightAveraging") and ema.init_args.decay == 0.99
    assert ema.init_args.update_every_n_steps == 10  # audiocraft's ema.updates: 10
    assert [c.class_path.rsplit(".", 1)[1] for c in small.trainer.callbacks].index("MethodExport") > 0  # after EMA
    ablation = ParseOnly(None, ShardDataModule, run=False,
                         args=["--config", str(configs / "clip_flow_small.yaml"),
                               "--config", str(configs / "clip_flow_no_motion.yaml")]).config
    assert not ablation.model.init_args.clip_flow.motion
    assert ablation.model.init_args.clip_flow.tokens_per_frame == 8 and ablation.model.init_args.optim.lr == 3.5e-5
    tiny = ParseOnly(None, ShardDataModule, run=False, args=["--config", str(configs / "clip_flow_tiny.yaml")]).config
    assert tiny.model.class_path == small.model.class_path and tiny.trainer.accelerator == "cpu"


def test_the_paper_schedule_warms_up_from_zero_to_its_rate_at_4000_and_ends_at_zero_at_4160():
    """§5.1 read as audiocraft's cosine scheduler: linear from 0 over 4000 updates, cosine to 0 at update 4160."""
    from dataclasses import replace

    from expotion.methods.clipflow.module import CLIP_FLOW_OPTIMIZATION
    from expotion.solvers.optimization import rates_per_update

    rates = rates_per_update(replace(CLIP_FLOW_OPTIMIZATION, lr=3.5e-5, warmup_steps=4000), 4160)
    assert rates[0] == 0.0 and rates[2000] == pytest.approx(1.75e-5, rel=1e-12)
    assert rates[4000] == pytest.approx(3.5e-5, rel=1e-12) and max(rates) == rates[4000]
    assert rates[4080] == pytest.approx(1.75e-5, rel=1e-9)  # halfway down the cosine
    assert rates[4160] == pytest.approx(0.0, abs=1e-20) and 0 < rates[4159] < 1e-8
    assert all(a <= b for a, b in zip(rates[:4000], rates[1:4001]))
    assert all(a >= b for a, b in zip(rates[4000:], rates[4001:]))


def test_a_run_that_cannot_leave_its_warmup_is_refused_in_one_line_unless_meant(tmp_path, cache, tiny_profile_cfg,
                                                                                capsys):
    """4 updates with a warmup of 10: one line before training, no checkpoint; the flag trains anyway."""
    from expotion.cli.train import run

    config = cli_config(tmp_path, cache, tiny_profile_cfg)
    args = ["fit", "--config", str(config), "--model.optim.warmup_steps=10", "--trainer.callbacks=[]"]
    assert run(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: the learning-rate warmup (10 updates) lasts the whole run (4 updates), so the rate never "
                   "reaches 0.003: lower --model.optim.warmup_steps, train longer (--trainer.max_steps), or pass "
                   "--model.optim.whole_run_warmup=true if that is meant")
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert run([*args, "--model.optim.whole_run_warmup=true", "--trainer.max_epochs=1"]) == 0


def test_the_schedule_page_is_what_the_scheduler_gives_for_clip_flow_small():
    """docs/clip-flow-schedule.md is regenerated, unchanged, by the command it names."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "docs" / "clip_flow_schedule.py")], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=True)
    page = (ROOT / "docs" / "clip-flow-schedule.md").read_text()
    assert done.stdout == page
    assert "| 4,000 | 3.5e-05 |" in page and "| 4,160 | 0 |" in page and "| 0 | 0 |" in page
