"""Every real loading path, exercised with tiny random models saved in the released on-disk formats."""
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from expotion.core.weights import MissingWeightsError


# ---- MusicGen (audiocraft) ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_musicgen_dir(tmp_path_factory):
    from expotion.musicgen.loading import save_tiny

    return save_tiny(tmp_path_factory.mktemp("musicgen"))


def test_tiny_musicgen_files_have_audiocraft_export_layout(tiny_musicgen_dir):
    for name in ("state_dict.bin", "compression_state_dict.bin"):
        pkg = torch.load(tiny_musicgen_dir / name, map_location="cpu", weights_only=True)
        assert set(pkg) == {"best_state", "xp.cfg", "version", "exported"}
        assert isinstance(pkg["xp.cfg"], str) and pkg["exported"] is True


def test_musicgen_loads_through_get_pretrained(tiny_musicgen_dir):
    from audiocraft.models import MusicGen

    from expotion.musicgen.loading import load_musicgen, model_signature

    model = load_musicgen(str(tiny_musicgen_dir))
    assert isinstance(model, MusicGen)
    sig = model_signature(model)
    assert sig["frame_rate"] == 50.0 and sig["sample_rate"] == 32000 and sig["n_q"] == 4
    assert model.max_duration > 18  # beyond the default extend_stride
    assert not any(p.requires_grad for p in model.lm.parameters())
    saved = torch.load(tiny_musicgen_dir / "state_dict.bin", weights_only=True)["best_state"]
    for key, value in model.lm.state_dict().items():
        assert torch.equal(value, saved[key]), key


def test_encodec_tokens_and_text_hidden(tiny_musicgen_dir):
    from expotion.musicgen.loading import encode_audio, load_musicgen, text_hidden

    model = load_musicgen(str(tiny_musicgen_dir))
    wav = np.sin(2 * np.pi * 440 * np.arange(64000) / 32000).astype(np.float32)
    codes = encode_audio(model, wav)
    assert codes.shape == (4, 100) and codes.dtype == np.int16
    assert codes.min() >= 0 and codes.max() < model.lm.card
    a, b = text_hidden(model, ["calm piano", "fast drums"])
    cond = model.lm.condition_provider.conditioners["description"]
    assert a.shape == (1, cond.dim)
    # the cached hidden state, projected by the frozen output_proj, is exactly what MusicGen conditions on
    embeds, mask = cond(cond.tokenize(["calm piano"]))
    assert torch.equal(cond.output_proj(torch.from_numpy(a))[None], embeds)
    assert not np.array_equal(a, b)


def test_tiny_encodec_tokens_follow_the_audio(tiny_musicgen_dir):
    """Codes of the tiny EnCodec change with the audio, so a demo trained on them can learn from the video."""
    from expotion.musicgen.loading import encode_audio, load_musicgen

    model = load_musicgen(str(tiny_musicgen_dir))
    t = np.arange(64000) / 32000
    noise = (0.3 * np.random.default_rng(0).standard_normal(t.size)).astype(np.float32)
    gated = (0.5 * np.sin(2 * np.pi * 110 * t) * (t % 0.5 < 0.25)).astype(np.float32)
    noise_codes, gated_codes = encode_audio(model, noise), encode_audio(model, gated)
    for codes in (noise_codes, gated_codes):
        assert all(len(np.unique(row)) >= 5 for row in codes)  # every codebook uses several entries
    assert (noise_codes[0] != gated_codes[0]).mean() > 0.5
    tone, silence = gated_codes[0, 1:12], gated_codes[0, 16:24]  # inside the first tone and the first gap
    assert len(set(silence)) == 1 and np.mean(tone != silence[0]) >= 0.75


def test_tiny_musicgen_at_the_released_codebook_size_seeds_every_code(tmp_path):
    """With 2048 codes per codebook (MusicGen's), the calibration audio grows until every code gets its own frame."""
    from expotion.musicgen.loading import TinyMusicGenConfig, load_musicgen, save_tiny

    model = load_musicgen(str(save_tiny(tmp_path, cfg=TinyMusicGenConfig(card=2048))))
    first, *rest = (layer._codebook.embed for layer in model.compression_model.quantizer.vq.layers)
    assert len(torch.unique(first, dim=0)) == 2048  # 2048 different frames
    assert all(embed.shape[0] == 2048 for embed in rest)


def test_musicgen_missing_files_named(tmp_path, monkeypatch):
    from expotion.musicgen.loading import check_musicgen_available

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "state_dict.bin").write_bytes(b"")
    with pytest.raises(MissingWeightsError, match="compression_state_dict.bin"):
        check_musicgen_available(str(tmp_path / "model"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(MissingWeightsError, match="facebook/musicgen-small.*state_dict.bin"):
        check_musicgen_available("facebook/musicgen-small")


def test_truncated_t5_vocabulary_is_refused():
    from expotion.musicgen.loading import check_text_tokenizer

    cond = SimpleNamespace(t5_tokenizer=list(range(100)))
    model = SimpleNamespace(lm=SimpleNamespace(condition_provider=SimpleNamespace(conditioners={"description": cond})))
    with pytest.raises(MissingWeightsError, match="only 100 tokens"):
        check_text_tokenizer(model, "facebook/musicgen-small")
    cond.t5_tokenizer = list(range(32100))
    check_text_tokenizer(model, "facebook/musicgen-small")


# ---- MARLIN ------------------------------------------------------------------------------------
def test_marlin_encoder_file_round_trip(tmp_path):
    from expotion.extractors.marlin import load_marlin, save_tiny

    path = save_tiny(tmp_path / "marlin_vit_tiny.encoder.pt", dim=32)
    saved = torch.load(path, weights_only=True)
    assert all(k.startswith("encoder.") for k in saved)  # the released *.encoder.pt layout
    enc = load_marlin(path)
    assert (enc.input_size, enc.dim, enc.window) == (64, 32, 16)
    assert all(torch.equal(v, saved[k]) for k, v in enc.model.state_dict().items())
    x = torch.rand(3, 3, 16, 64, 64)
    feats = enc(x)
    assert feats.shape == (3, 32)
    assert torch.allclose(enc(x[:1]), feats[:1], atol=1e-5)
    with pytest.raises(ValueError, match=r"takes windows of shape \(W, 3, 16, 64, 64\), got \(1, 3, 8, 64, 64\)"):
        enc(torch.rand(1, 3, 8, 64, 64))


def test_marlin_missing_file_names_it(tmp_path):
    from expotion.extractors.marlin import load_marlin

    with pytest.raises(MissingWeightsError, match="marlin_vit_base_ytf.encoder.pt"):
        load_marlin(tmp_path / "marlin_vit_base_ytf.encoder.pt")


# ---- RAFT (torchvision) ------------------------------------------------------------------------
def test_raft_from_torch_hub_cache(tmp_path, monkeypatch):
    from expotion.extractors.raft import RAFT_FILES, load_raft, save_tiny

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(MissingWeightsError, match=RAFT_FILES["small"]):
        load_raft("small")
    path = save_tiny(tmp_path / "hub" / "checkpoints" / RAFT_FILES["small"], seed=3)
    model = load_raft("small")  # torchvision's own weights enum, offline from the cache
    saved = torch.load(path, weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())


def test_raft_explicit_checkpoint_and_flow_shapes(tmp_path):
    from conftest import moving_frames

    from expotion.extractors.raft import FlowConfig, compute_flow, load_raft, save_tiny

    model = load_raft("small", save_tiny(tmp_path / "raft.pth"))
    frames = moving_frames(4, 96, 120)
    flow = compute_flow(model, frames, FlowConfig(128, 128, updates=2, pool=8))
    assert flow.shape == (3, 2, 16, 16) and np.isfinite(flow).all()
    with pytest.raises(ValueError, match="multiples of 8"):
        FlowConfig(100, 128)


# ---- registry ----------------------------------------------------------------------------------
def test_weights_check_lists_missing_files(tmp_path, capsys, monkeypatch):
    from expotion.cli.main import main

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert main(["weights", "check", "--weights-dir", str(tmp_path)]) == 1  # a file is missing
    out = capsys.readouterr().out
    for name in ("marlin_vit_base_ytf.encoder.pt", "24-01-04T16-39-21.pt", "raft_large_C_T_SKHT_V2-ff5fadd5.pth"):
        assert name in out
    assert "MISSING" in out and "goes in:" in out
    # each checkpoint that comes from its authors' release names where to get it
    assert "https://github.com/ControlNet/MARLIN/releases/download/model_v1/marlin_vit_base_ytf.encoder.pt" in out
    from expotion.extractors.motionformer import CHECKPOINT_URL

    assert CHECKPOINT_URL in out


def test_missing_hub_musicgen_names_the_hf_download_command(tmp_path, monkeypatch):
    """The pinned huggingface_hub ships the ``hf`` command (no ``huggingface-cli``); the message names what exists."""
    import huggingface_hub.constants as hc

    from expotion.musicgen.loading import check_musicgen_available

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(MissingWeightsError, match=r"\(hf download facebook/musicgen-small\)"):
        check_musicgen_available("facebook/musicgen-small")
    assert (Path(sys.executable).parent / "hf").exists()
