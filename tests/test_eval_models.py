"""Evaluation models: released key layouts, loading small random files saved in the real format, and refusals."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from eval_synth import tone, write_video

from expotion.cli.main import main as expotion_main
from expotion.core import tiny
from expotion.core.weights import REGISTRY, MissingWeightsError
from expotion.evaluation import clap, languagebind, models, passt, vggish

EVAL_KEYS = ("vggish", "passt", "clap_music", "languagebind_video", "languagebind_audio")
RELEASED_AUDIO = languagebind.TowerConfig(num_mel_bins=112, target_length=1036)
RELEASED_VIDEO = languagebind.TowerConfig(add_time_attn=True, num_frames=8)


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """Empty torch.hub and Hugging Face caches, so nothing on this machine is found by accident."""
    import huggingface_hub.constants

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path


def shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


# ---- released layouts (built on the meta device: no memory, no weights) --------------------


def test_vggish_released_layout():
    with torch.device("meta"):
        got = shapes(vggish.VGGish())
    convs = {0: (64, 1), 3: (128, 64), 6: (256, 128), 8: (256, 256), 11: (512, 256), 13: (512, 512)}
    expected = {f"features.{i}.weight": (o, c, 3, 3) for i, (o, c) in convs.items()}
    expected |= {f"features.{i}.bias": (o,) for i, (o, _) in convs.items()}
    expected |= {"embeddings.0.weight": (4096, 512 * 4 * 6), "embeddings.0.bias": (4096,),
                 "embeddings.2.weight": (4096, 4096), "embeddings.2.bias": (4096,),
                 "embeddings.4.weight": (128, 4096), "embeddings.4.bias": (128,)}
    assert got == expected


def test_passt_released_layout():
    with torch.device("meta"):
        got = shapes(passt.PaSST())
    assert len(got) == 159
    assert {k: v for k, v in got.items() if not k.startswith("blocks.")} == {
        "cls_token": (1, 1, 768), "dist_token": (1, 1, 768), "new_pos_embed": (1, 2, 768),
        "freq_new_pos_embed": (1, 768, 12, 1), "time_new_pos_embed": (1, 768, 1, 99),
        "patch_embed.proj.weight": (768, 1, 16, 16), "patch_embed.proj.bias": (768,),
        "norm.weight": (768,), "norm.bias": (768,), "head.0.weight": (768,), "head.0.bias": (768,),
        "head.1.weight": (527, 768), "head.1.bias": (527,), "head_dist.weight": (527, 768), "head_dist.bias": (527,),
    }
    assert got["blocks.11.attn.qkv.weight"] == (2304, 768) and got["blocks.11.mlp.fc1.weight"] == (3072, 768)


@pytest.mark.parametrize("cfg, positions, temporal", [(RELEASED_AUDIO, 593, False), (RELEASED_VIDEO, 257, True)])
def test_languagebind_released_layout(cfg, positions, temporal):
    with torch.device("meta"):
        got = shapes(languagebind.Tower(cfg))
    assert got["vision_model.embeddings.position_embedding.weight"] == (positions, 1024)
    assert got["vision_model.embeddings.patch_embedding.weight"] == (1024, 3, 14, 14)
    assert got["visual_projection.weight"] == (768, 1024)
    layer = sorted(k.removeprefix("vision_model.encoder.layers.23.") for k in got if ".layers.23." in k)
    spatial = ["layer_norm1.bias", "layer_norm1.weight", "layer_norm2.bias", "layer_norm2.weight", "mlp.fc1.bias",
               "mlp.fc1.weight", "mlp.fc2.bias", "mlp.fc2.weight"] + [
        f"self_attn.{p}_proj.{w}" for p in ("k", "out", "q", "v") for w in ("bias", "weight")]
    time = [f"temporal_attn.{p}_proj.{w}" for p in ("k", "out", "q", "v") for w in ("bias", "weight")] + [
        "temporal_embedding", "temporal_layer_norm1.bias", "temporal_layer_norm1.weight"]
    assert layer == sorted(spatial + (time if temporal else []))
    assert ".layers.24." not in " ".join(got)


# ---- registry and `expotion weights check` --------------------------------------------------


def test_weights_check_lists_eval_models(caches, capsys):
    wdir = caches / "weights"
    expotion_main(["weights", "check", "--weights-dir", str(wdir)])
    out = capsys.readouterr().out
    for key in EVAL_KEYS:
        assert f"MISSING  {key}" in out
    assert models.VGGISH_FILE in out and models.PASST_FILE in out and "laion/larger_clap_music" in out
    assert "needed by: FAD-VGG" in out and "needed by: KL and IS" in out
    tiny.write("vggish", wdir)
    tiny.write("clap_music", wdir)
    expotion_main(["weights", "check", "--weights-dir", str(wdir)])
    out = capsys.readouterr().out
    assert "present  vggish" in out and str(wdir / models.VGGISH_FILE) in out
    assert "present  clap_music" in out and "MISSING  passt" in out


@pytest.mark.parametrize("key", EVAL_KEYS)
def test_missing_weights_name_the_file_and_where(caches, key):
    with pytest.raises(MissingWeightsError) as err:
        models.resolve(key, caches / "weights")
    assert REGISTRY[key].filename in str(err.value) and "Put it in" in str(err.value)


def test_single_files_are_found_in_torch_hub_checkpoints(caches):
    hub = caches / "torch" / "hub" / "checkpoints"
    vggish.save_tiny(hub / models.VGGISH_FILE)
    assert models.resolve("vggish", caches / "weights") == hub / models.VGGISH_FILE
    passt.save_tiny(caches / "weights" / models.PASST_FILE)
    assert models.resolve("passt", caches / "weights") == caches / "weights" / models.PASST_FILE


def test_hf_checkpoints_are_found_in_the_hub_cache(caches):
    snapshot = caches / "hf" / "models--LanguageBind--LanguageBind_Audio_FT" / "snapshots" / "0123abc"
    languagebind.save_tiny(snapshot, modality="audio")
    refs = caches / "hf" / "models--LanguageBind--LanguageBind_Audio_FT" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text("0123abc")
    found = models.resolve("languagebind_audio", caches / "weights")
    assert found == snapshot
    assert isinstance(models.load_languagebind(found, "audio"), languagebind.Tower)


def test_hf_directory_without_weights_is_missing(caches):
    d = tiny.write("languagebind_video", caches / "weights")
    (d / "pytorch_model.bin").unlink()
    with pytest.raises(MissingWeightsError, match="no model weights"):
        models.checkpoint_files(models.resolve("languagebind_video", caches / "weights"))


# ---- plumbing: random files in the real format, through the real loaders ------------------------


def test_vggish_loads_and_embeds(tmp_path):
    model = models.load_vggish(vggish.save_tiny(tmp_path / models.VGGISH_FILE))
    emb = vggish.embed(model, np.random.default_rng(0).normal(size=16000 * 5).astype(np.float32) * 0.1)
    assert emb.shape == (5, 128) and emb.dtype == np.float32
    assert (emb < 0).any()  # taken before the final ReLU
    assert vggish.embed(model, np.zeros(8000, np.float32)).shape == (0, 128)


def test_vggish_rejects_a_foreign_state_dict(tmp_path):
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "x.pth")
    with pytest.raises(ValueError, match="not a VGGish state dict"):
        models.load_vggish(tmp_path / "x.pth")


def test_passt_loads_and_tags_chunks(tmp_path):
    tagger = models.load_passt(passt.save_tiny(tmp_path / models.PASST_FILE))
    x = np.random.default_rng(0).normal(size=32000 * 25).astype(np.float32) * 0.1
    logits = passt.clip_logits(tagger, x)
    assert logits.shape == (3, 527)  # 10 s + 10 s + 5 s
    assert np.allclose(logits[0], passt.clip_logits(tagger, x[:320000])[0], atol=1e-5)
    assert passt.clip_logits(tagger, x[: 320000 + 1000]).shape == (1, 527)  # 31 ms tail dropped
    with pytest.raises(ValueError, match="too short"):
        passt.clip_logits(tagger, x[:1000])


def test_passt_accepts_wrapped_and_three_channel_checkpoints(tmp_path):
    torch.manual_seed(0)
    net = passt.PaSST(dim=64, depth=1, mlp_hidden=64)
    state = net.state_dict()
    rgb = state["patch_embed.proj.weight"].repeat(1, 3, 1, 1) / 3
    torch.save({"model": {**state, "patch_embed.proj.weight": rgb}}, tmp_path / "p.pt")
    loaded = models.load_passt(tmp_path / "p.pt").net
    assert torch.allclose(loaded.patch_embed.proj.weight, state["patch_embed.proj.weight"], atol=1e-6)
    with pytest.raises(ValueError, match="at most 99"):
        loaded(torch.zeros(1, 1, 128, 1200))


def test_languagebind_towers_load_and_embed(tmp_path):
    video = models.load_languagebind(tiny.write("languagebind_video", tmp_path), "video")
    audio = models.load_languagebind(tiny.write("languagebind_audio", tmp_path), "audio")
    v = video(languagebind.video_input(write_video(tmp_path / "c.mp4"), video.cfg))
    a = audio(languagebind.audio_input(tone(440, 2.0, 16000), audio.cfg))
    assert v.shape == (1, 16) and a.shape == (1, 16)
    assert torch.isfinite(v).all() and torch.isfinite(a).all()


def test_languagebind_refuses_the_wrong_modality_and_incomplete_files(tmp_path):
    d = tiny.write("languagebind_audio", tmp_path)
    with pytest.raises(ValueError, match="audio checkpoint where the video one is expected"):
        models.load_languagebind(d, "video")
    state = torch.load(d / "pytorch_model.bin", weights_only=True)
    del state["vision_model.post_layernorm.weight"]
    torch.save(state, d / "pytorch_model.bin")
    with pytest.raises(RuntimeError, match="post_layernorm.weight"):
        models.load_languagebind(d, "audio")


def test_languagebind_config_is_read_from_the_released_layout(tmp_path):
    d = tiny.write("languagebind_video", tmp_path)
    doc = json.loads((d / "config.json").read_text())
    assert doc["vision_config"]["num_frames"] == 8 and doc["vision_config"]["add_time_attn"] is True
    cfg = languagebind.TowerConfig.from_json(d / "config.json")
    assert cfg == languagebind.TINY_VIDEO


def test_clap_loads_and_embeds(tmp_path):
    model = models.load_clap(tiny.write("clap_music", tmp_path))
    assert model.sample_rate == 48000 and model.window_samples == 480000
    a = model.audio_embedding(tone(440, 3.0, 48000))
    t = model.text_embedding("a calm piano melody")
    assert a.shape == t.shape == (16,)
    assert np.linalg.norm(a) == pytest.approx(1.0, abs=1e-5) and np.linalg.norm(t) == pytest.approx(1.0, abs=1e-5)
    long = np.concatenate([tone(440, 10.0, 48000), tone(660, 10.0, 48000)])
    both = model.audio_embedding(long)
    halves = model.audio_embedding(long[:480000]) + model.audio_embedding(long[480000:])
    assert np.allclose(both, halves / np.linalg.norm(halves), atol=1e-5)


def test_clap_refuses_a_tokenizer_smaller_than_the_text_encoder(tmp_path):
    d = clap.save_tiny(tmp_path / "larger_clap_music", vocab_size=1000)
    with pytest.raises(clap.TokenizerError, match="261 tokens but the text encoder's vocabulary has 1000"):
        models.load_clap(d)


def test_clap_refuses_the_near_empty_tokenizer_of_missing_files(tmp_path):
    """Offline, transformers loads a few-token tokenizer when the tokenizer files are gone; it must be refused."""
    d = tiny.write("clap_music", tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (d / name).unlink()
    with pytest.raises(MissingWeightsError, match="tokenizer"):
        models.load_clap(d)


def test_clap_refuses_a_tokenizer_that_loses_words():
    from transformers import RobertaTokenizer

    vocab = {t: i for i, t in enumerate(("<s>", "<pad>", "</s>", "<unk>", "<mask>"))}
    vocab |= {c: len(vocab) + i for i, c in enumerate("xyzw")}
    with pytest.raises(clap.TokenizerError, match="does not reproduce"):
        clap.check_tokenizer(RobertaTokenizer(vocab=vocab, merges=[]), len(vocab), "test")
    full = RobertaTokenizer(vocab=clap.byte_level_vocab(), merges=[])
    clap.check_tokenizer(full, len(full), "test")


def test_tiny_writer_covers_every_eval_checkpoint(tmp_path, caches):
    for key in EVAL_KEYS:
        tiny.write(key, tmp_path / "w")
        assert models.resolve(key, tmp_path / "w")
    shutil.rmtree(tmp_path / "w")
    with pytest.raises(ValueError, match="unknown"):
        tiny.write("nope", tmp_path / "w")
