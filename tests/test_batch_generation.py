"""Batched generation: a clip's tokens alone equal its tokens inside any batch and in any order (per-row random
streams, visual prefixes and windows); batches grouped by duration; the wavs do not depend on the batch size;
two Lightning processes write the wavs of one."""
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from test_generate import adaptor_for, checkpoint, musicgen, random_features, spec, tiny_args  # noqa: F401

from expotion.cli.main import main as cli_main
from expotion.inference import ModelSettings, SamplingSettings, generate_for_cache, load_models
from expotion.inference.batch import plan_batches
from expotion.musicgen.sampling import clip_seed
from expotion.musicgen.windows import generate_tokens

ROOT = Path(__file__).resolve().parents[1]


def batch_features(seconds: float, rows: int) -> list[dict]:
    torch.manual_seed(rows)
    return [random_features(seconds) for _ in range(rows)]


def stacked(feats: list[dict]) -> dict:
    return {name: torch.cat([f[name] for f in feats]) for name in feats[0]}


@pytest.mark.parametrize("duration", [1.5, 5.0], ids=["one-window", "long-form"])
def test_a_clip_gets_the_same_tokens_alone_and_inside_any_batch_in_any_order(musicgen, spec, duration):
    adaptor = adaptor_for(musicgen, spec, 1.0)  # gates open: the video steers; 5 s takes four 2 s windows
    captions, seeds = ["calm piano", "loud drums", "calm piano"], [11, 22, 33]
    feats = batch_features(duration, 3)
    kw = dict(adaptor=adaptor, rates=spec.rates, top_k=50)
    alone = [generate_tokens(musicgen, [c], duration, feats=f, seed=s, **kw)[0] for c, f, s in zip(captions, feats, seeds)]
    together = generate_tokens(musicgen, captions, duration, feats=stacked(feats), seed=seeds, **kw)
    order = [2, 0, 1]
    shuffled = generate_tokens(musicgen, [captions[i] for i in order], duration,
                               feats=stacked([feats[i] for i in order]), seed=[seeds[i] for i in order], **kw)
    assert together.shape == (3, 4, int(duration * 50))
    for i in range(3):
        assert torch.equal(together[i], alone[i])
        assert torch.equal(shuffled[order.index(i)], alone[i])
    # each row has its own prefix and random stream: rows 0 and 2 share a caption, not a video or a seed
    assert not torch.equal(alone[0], alone[2])
    other_video = generate_tokens(musicgen, [captions[0]], duration, feats=feats[2], seed=seeds[0], **kw)[0]
    other_seed = generate_tokens(musicgen, [captions[0]], duration, feats=feats[0], seed=seeds[2], **kw)[0]
    assert not torch.equal(other_video, alone[0]) and not torch.equal(other_seed, alone[0])


@pytest.mark.gpu
def test_per_row_generators_sample_on_the_gpu(tiny_profile_cfg, spec):  # noqa: F811
    from expotion.musicgen.loading import load_musicgen

    musicgen = load_musicgen(tiny_profile_cfg.musicgen, device="cuda")
    adaptor = adaptor_for(musicgen, spec, 1.0).cuda()
    feats = stacked(batch_features(1.5, 3))
    kw = dict(adaptor=adaptor, feats=feats, rates=spec.rates, seed=[11, 22, 33], top_k=50)
    first = generate_tokens(musicgen, ["a", "b", "c"], 1.5, **kw)
    assert first.device.type == "cuda" and first.shape == (3, 4, 75)
    assert torch.equal(first, generate_tokens(musicgen, ["a", "b", "c"], 1.5, **kw))  # reproducible batch
    plain = generate_tokens(musicgen, ["a"], 1.5, seed=7, top_k=50)
    musicgen.set_generation_params(duration=1.5, top_k=50, cfg_coef=3.0)
    torch.manual_seed(7)  # one prompt: the row generator draws what the global CUDA generator draws
    assert torch.equal(plain, musicgen.generate(["a"], return_tokens=True)[1])


def test_clip_seeds_are_fixed_by_seed_and_clip_id():
    assert clip_seed(0, "demo-002-000") == clip_seed(0, "demo-002-000") == 3380236382001906091
    assert len({clip_seed(s, c) for s in (0, 1) for c in ("a", "b")}) == 4
    assert all(0 <= clip_seed(s, "a") < 2**63 for s in range(50))


@pytest.fixture(scope="module")
def models(checkpoint, tiny_profile_cfg):  # noqa: F811
    return load_models(ModelSettings(checkpoint=checkpoint, musicgen=tiny_profile_cfg.musicgen, profile="tiny",
                                     tiny_dir=Path(tiny_profile_cfg.marlin_path).parent, device="cpu"))


def test_batches_hold_clips_of_one_duration_and_one_set_of_streams(models, demo_cache):
    from expotion.data.clips import read_clips

    clips = read_clips(demo_cache[0] / "train", tuple(models.spec.shapes))  # four 2 s clips
    assert [len(b) for b in plan_batches(models, clips, 3)] == [3, 1]
    motion_only = {"synchformer": clips[3].shapes["synchformer"]}
    odd = [clips[0], replace(clips[1], duration_s=1.5), clips[2], replace(clips[3], shapes=motion_only)]
    batches = plan_batches(models, odd, 8)
    assert [[c.clip_id for c in b] for b in batches] == [[odd[0].clip_id, odd[2].clip_id], [odd[1].clip_id],
                                                         [odd[3].clip_id]]


def test_batch_mode_wavs_and_summary_do_not_depend_on_the_batch_size(models, demo_cache, checkpoint,  # noqa: F811
                                                                     tiny_profile_cfg, tmp_path):
    split = demo_cache[0] / "train"
    sampling = SamplingSettings(seed=5, top_k=50)
    one = generate_for_cache(models, split, tmp_path / "b1", sampling=sampling, batch_size=1)
    three = generate_for_cache(models, split, tmp_path / "b3", sampling=sampling, batch_size=3)
    assert (one.batches, three.batches) == (4, 2) and one.written == three.written and len(one.written) == 4
    for clip in one.written:
        assert (tmp_path / "b1" / f"{clip}.wav").read_bytes() == (tmp_path / "b3" / f"{clip}.wav").read_bytes()
    assert cli_main(["generate", "--cache", str(split), "--out-dir", str(tmp_path / "cli"), "--checkpoint",
                     str(checkpoint), "--seed", "5", "--batch-size", "4", *tiny_args(tiny_profile_cfg)]) == 0
    summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert summary["written"] == one.written and summary["batches"] == 1 and summary["processes"] == 1
    assert summary["devices"] == [["cpu"]]
    assert summary["sampling"] == {"seed": 5, "cfg_coef": 3.0, "top_k": 50, "extend_stride": None}
    for clip in one.written:
        assert (tmp_path / "cli" / f"{clip}.wav").read_bytes() == (tmp_path / "b1" / f"{clip}.wav").read_bytes()


def test_two_lightning_processes_write_the_wavs_of_one(demo_cache, checkpoint, tiny_profile_cfg, tmp_path):  # noqa: F811
    """DDP on CPU (gloo): each process takes one of the val split's two clips; the set of wavs is byte-identical
    to one process generating both in one batch, and rank 0's summary lists both."""
    split = demo_cache[0] / "val"
    args = ["generate", "--cache", str(split), "--checkpoint", str(checkpoint), "--batch-size", "2",
            *tiny_args(tiny_profile_cfg)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each of the two processes gets on 2 cores (float sums depend on the thread count)
    try:
        assert cli_main([*args, "--out-dir", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(threads)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-m", "expotion.cli.main", *args, "--out-dir", str(tmp_path / "two"),
                           "--devices", "2"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    wavs = sorted(p.name for p in (tmp_path / "one").glob("*.wav"))
    assert wavs == ["demo-002-000.wav", "demo-002-001.wav"]
    assert sorted(p.name for p in (tmp_path / "two").glob("*.wav")) == wavs
    for name in wavs:
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["written"] == [w[:-4] for w in wavs] and summary["batches"] == 2
    assert summary["devices"] == [["cpu"], ["cpu"]]  # every model of each process on that process's device
    assert "generated 2 of 2 clips" in done.stdout and "on 2 processes" in done.stdout


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_each_lightning_process_puts_every_model_on_its_own_gpu(demo_cache, checkpoint, tiny_profile_cfg,  # noqa: F811
                                                                 tmp_path):
    args = ["generate", "--cache", str(demo_cache[0] / "val"), "--checkpoint", str(checkpoint), "--batch-size", "2",
            "--device", "cuda", "--devices", "2", "--out-dir", str(tmp_path / "two"), *tiny_args(tiny_profile_cfg)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-m", "expotion.cli.main", *args], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["devices"] == [["cuda:0"], ["cuda:1"]]
