"""The Synchformer visual extractor: checkpoint layout, shapes, loading and preprocessing."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from expotion.core.weights import REGISTRY, MissingWeightsError
from expotion.extractors.motionformer import (CHECKPOINT_FILENAME, MotionFormer, MotionFormerConfig,
                                              load_synchformer_visual, preprocess_segments, save_synchformer_format)

KEYS_FILE = Path(__file__).parent / "data" / "synchformer_vfeat_keys.txt"
TINY = MotionFormerConfig.tiny()


@dataclasses.dataclass
class TrainingArgs:
    """Stands in for the OmegaConf config the official checkpoint pickles under 'args'."""

    lr: float = 2e-6


def official_shapes() -> dict[str, tuple[int, ...]]:
    rows = (line.split("\t") for line in KEYS_FILE.read_text().splitlines() if line)
    return {name: tuple(int(n) for n in shape.split(",")) for name, shape in rows}


def tiny_model(seed: int = 0, **changes) -> MotionFormer:
    torch.manual_seed(seed)
    return MotionFormer(dataclasses.replace(TINY, **changes)).eval()


def tiny_input(b: int, s: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, s, 3, TINY.num_frames, TINY.img_size, TINY.img_size, generator=g) * 2 - 1


def run(model: MotionFormer, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def changed_slots(before: torch.Tensor, after: torch.Tensor) -> list[int]:
    """Temporal slots of segment 0 whose features moved by more than float noise."""
    diff = (before - after)[0, 0].abs().amax(dim=-1)
    return [i for i, d in enumerate(diff.tolist()) if d > 1e-5]


# ---- architecture ----------------------------------------------------------------


def test_vit_b_state_dict_matches_official_keys():
    with torch.device("meta"):
        model = MotionFormer(MotionFormerConfig())
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == official_shapes()


def test_tiny_config_keeps_the_key_layout():
    kept_blocks = {str(i) for i in range(TINY.depth)}
    expected = {k for k in official_shapes() if not k.startswith("blocks.") or k.split(".")[1] in kept_blocks}
    assert set(tiny_model().state_dict()) == expected


@pytest.mark.parametrize("b,s", [(1, 1), (2, 3)])
def test_tiny_output_shape(b, s):
    out = run(tiny_model(), tiny_input(b, s))
    assert out.shape == (b, s, TINY.num_frames // TINY.tubelet, TINY.dim)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "shape",
    [
        (1, 3, 16, 32, 32),  # segment axis missing
        (1, 1, 16, 3, 32, 32),  # frames before channels
        (1, 1, 3, 8, 32, 32),  # too few frames
        (1, 1, 3, 16, 64, 64),  # wrong resolution
    ],
)
def test_wrong_input_shape_is_rejected(shape):
    with pytest.raises(ValueError, match=r"\(B, S, 3, 16, 32, 32\)"):
        tiny_model()(torch.zeros(shape))


@pytest.mark.parametrize("frame", [0, 5, 15])
def test_without_blocks_each_slot_sees_only_its_tubelet(frame):
    """With depth 0 only the tubelet embedding feeds slot t: frames 2t and 2t+1."""
    model = tiny_model(depth=0)
    x = tiny_input(1, 1)
    y = x.clone()
    y[:, :, :, frame] = -y[:, :, :, frame]
    assert changed_slots(run(model, x), run(model, y)) == [frame // TINY.tubelet]


@pytest.mark.parametrize("over_time", [True, False])
def test_divided_attention_groups(over_time):
    """Temporal attention links one patch position across frames; spatial attention, one frame's patches."""
    attn = tiny_model().blocks[0].timeattn
    slots, patches = TINY.slots, TINY.patches_per_slot
    x = torch.randn(1, 1 + slots * patches, TINY.dim, generator=torch.Generator().manual_seed(2))
    frame, position = 5, 3
    y = x.clone()
    y[0, 1 + frame * patches + position] += 1.0
    with torch.no_grad():
        moved = (attn(x, slots, over_time) - attn(y, slots, over_time)).abs().amax(-1)[0] > 1e-6
    grid = moved[1:].view(slots, patches)
    expected = torch.zeros(slots, patches, dtype=torch.bool)
    if over_time:
        expected[:, position] = True
    else:
        expected[frame, :] = True
    assert moved[0], "the CLS token attends to every token"
    assert torch.equal(grid, expected)


def test_full_model_mixes_time():
    """Unlike the depth-0 case, a change in the last frame reaches every slot, the first included."""
    model = tiny_model()
    x = tiny_input(1, 1)
    y = x.clone()
    y[:, :, :, 15] = -y[:, :, :, 15]
    assert changed_slots(run(model, x), run(model, y)) == list(range(TINY.slots))


def test_static_clip_slots_differ_by_temporal_embedding():
    """Identical frames make every slot's input equal up to its temporal position embedding."""
    model = tiny_model()
    x = tiny_input(1, 1)[:, :, :, :1].expand(-1, -1, -1, TINY.num_frames, -1, -1)
    out = run(model, x)[0, 0]
    assert (out[1:] - out[0]).abs().amax() > 1e-4
    with torch.no_grad():
        model.temp_embed.zero_()
    out = run(model, x)[0, 0]
    torch.testing.assert_close(out[1:], out[:1].expand_as(out[1:]), rtol=0, atol=1e-5)


def test_segments_are_encoded_independently():
    model = tiny_model()
    x = tiny_input(2, 2)
    y = x.clone()
    y[1, 0] = -y[1, 0]
    before, after = run(model, x), run(model, y)
    torch.testing.assert_close(after[0], before[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(after[1, 1], before[1, 1], rtol=0, atol=1e-6)
    assert (after[1, 0] - before[1, 0]).abs().max() > 1e-4


# ---- checkpoints -----------------------------------------------------------------


def test_round_trip_through_synchformer_format(tmp_path):
    model = tiny_model(seed=3)
    path = save_synchformer_format(model, tmp_path / "sync.pt", extra={"epoch": 7})
    raw = torch.load(path, weights_only=True)
    assert "afeat_extractor.placeholder" in raw["model"] and raw["epoch"] == 7

    loaded = load_synchformer_visual(path, TINY)
    assert not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[k], restored[k]) for k in original)
    x = tiny_input(1, 2)
    assert torch.equal(run(model, x), run(loaded, x))


def rewrite(path: Path, edit) -> Path:
    ckpt = torch.load(path, weights_only=True)
    edit(ckpt["model"])
    torch.save(ckpt, path)
    return path


def test_missing_key_is_named(tmp_path):
    path = save_synchformer_format(tiny_model(), tmp_path / "sync.pt")
    rewrite(path, lambda sd: sd.pop("vfeat_extractor.blocks.1.timeattn.qkv.bias"))
    with pytest.raises(ValueError, match="missing") as err:
        load_synchformer_visual(path, TINY)
    assert "sync.pt" in str(err.value) and "blocks.1.timeattn.qkv.bias" in str(err.value)


def test_unexpected_key_is_named(tmp_path):
    path = save_synchformer_format(tiny_model(), tmp_path / "sync.pt")
    rewrite(path, lambda sd: sd.update({"vfeat_extractor.head.weight": torch.zeros(3)}))
    with pytest.raises(ValueError, match=r"unexpected.*head\.weight"):
        load_synchformer_visual(path, TINY)


def test_config_mismatch_is_reported_by_key(tmp_path):
    path = save_synchformer_format(tiny_model(), tmp_path / "sync.pt")
    with pytest.raises(ValueError, match=r"shape mismatch.*cls_token"):
        load_synchformer_visual(path, dataclasses.replace(TINY, dim=48))


def test_checkpoint_without_visual_weights(tmp_path):
    path = tmp_path / "audio_only.pt"
    torch.save({"model": {"afeat_extractor.w": torch.zeros(1)}}, path)
    with pytest.raises(ValueError, match=r"audio_only\.pt.*vfeat_extractor"):
        load_synchformer_visual(path, TINY)


def test_pickled_training_state_needs_consent(tmp_path):
    path = save_synchformer_format(tiny_model(), tmp_path / "sync.pt", extra={"args": TrainingArgs()})
    with pytest.raises(ValueError, match="allow_pickle"):
        load_synchformer_visual(path, TINY, allow_pickle=False)
    assert load_synchformer_visual(path, TINY).cfg == TINY


def test_missing_file_names_the_checkpoint(tmp_path):
    with pytest.raises(MissingWeightsError, match="nowhere.pt"):
        load_synchformer_visual(tmp_path / "nowhere.pt", TINY)


def test_default_location_is_the_weights_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPOTION_WEIGHTS", str(tmp_path))
    with pytest.raises(MissingWeightsError, match=CHECKPOINT_FILENAME):
        load_synchformer_visual(cfg=TINY)
    spec = REGISTRY["synchformer"]
    assert spec.filename == CHECKPOINT_FILENAME and spec.find(tmp_path) is None
    target = save_synchformer_format(tiny_model(), tmp_path / "synchformer" / CHECKPOINT_FILENAME)
    assert spec.find(tmp_path) == target
    assert load_synchformer_visual(cfg=TINY).cfg == TINY


# ---- preprocessing ---------------------------------------------------------------


def indexed_frames(n: int, h: int = 90, w: int = 120) -> np.ndarray:
    """Frame i is a flat image of value i, so the frame index survives resizing."""
    return np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, h, w, 3)).copy()


@pytest.mark.parametrize("stride,segments", [(8, 30), (16, 15)])
def test_preprocess_segments_shape_range_and_order(stride, segments):
    out = preprocess_segments(indexed_frames(250), TINY, stride=stride)
    assert out.shape == (segments, 3, 16, TINY.img_size, TINY.img_size)
    assert out.dtype == torch.float32 and out.min() >= -1 and out.max() <= 1
    index = torch.round((out * 0.5 + 0.5) * 255)
    for s in (0, 1, segments - 1):
        expected = torch.arange(s * stride, s * stride + 16, dtype=index.dtype)
        assert torch.equal(index[s].amin(dim=(0, 2, 3)), expected)
        assert torch.equal(index[s].amax(dim=(0, 2, 3)), expected)


def test_preprocess_default_size():
    out = preprocess_segments(indexed_frames(24), MotionFormerConfig())
    assert out.shape == (2, 3, 16, 224, 224)


@pytest.mark.parametrize("portrait", [False, True])
def test_preprocess_crops_the_centre(portrait):
    """Half dark, half bright along the long side: a centred square keeps both halves."""
    frame = np.zeros((64, 128, 3), dtype=np.uint8)
    frame[:, 64:] = 255
    if portrait:
        frame = frame.transpose(1, 0, 2)
    out = preprocess_segments(np.stack([frame] * 16), TINY)[0, :, 0]
    if portrait:
        out = out.transpose(1, 2)
    assert out.shape == (3, 32, 32)
    assert torch.allclose(out[..., :12], torch.tensor(-1.0))
    assert torch.allclose(out[..., 20:], torch.tensor(1.0))


def test_preprocess_needs_a_full_segment():
    with pytest.raises(ValueError, match="at least 16 frames"):
        preprocess_segments(indexed_frames(15), TINY)
