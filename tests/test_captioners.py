"""The captioners on tiny random stand-ins of the real transformers classes, loaded through the real path."""
import functools
import shutil

import numpy as np
import pytest
import torch

from expotion.captioners.base import KINDS, Clip, GenerationSettings, cut_span
from expotion.captioners.captioning import MUSIC_PROMPT, SCENE_PROMPT, load_captioner
from expotion.captioners.models import MODELS, TokenizerError
from expotion.core.tiny import CAPTIONING, make_tiny, tiny_path
from expotion.core.weights import MissingWeightsError

SHORT = GenerationSettings(max_new_tokens=8)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-captioners")
    make_tiny(root, CAPTIONING)
    return root


@pytest.fixture(scope="module")
def music(tiny_dir):
    return load_captioner("music", weights=tiny_dir, settings=SHORT)


@pytest.fixture(scope="module")
def fused(tiny_dir):
    return load_captioner("fused", weights=tiny_dir, settings=SHORT)


def tone(freq: float, seconds: float, rate: int) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(round(seconds * rate)) / rate)).astype(np.float32)


def spy_processor(monkeypatch, captioner) -> list[dict]:
    """Record every call of the processor (the class's own ``__call__`` still runs) and every chat it renders."""
    calls = []
    cls = type(captioner.processor)
    real_call, real_template = cls.__call__, cls.apply_chat_template

    def call(self, *args, **kwargs):
        calls.append(kwargs)
        return real_call(self, *args, **kwargs)

    def template(self, conversation, *args, **kwargs):
        calls.append({"conversation": conversation})
        return real_template(self, conversation, *args, **kwargs)

    monkeypatch.setattr(cls, "__call__", call)
    monkeypatch.setattr(cls, "apply_chat_template", template)
    return calls


def test_the_captioners_are_selected_by_name():
    assert {k: (v.reads, v.model_key) for k, v in KINDS.items()} == {
        "music": (("audio",), "qwen2_audio"), "scene": (("audio",), "qwen2_audio"),
        "fused": (("video", "audio"), "qwen2_5_omni"), "flamingo": (("audio",), "audioflamingo3")}
    assert KINDS["music"].default_prompt == KINDS["flamingo"].default_prompt == "Please describe the music."
    with pytest.raises(ValueError, match="unknown captioner 'lyrics'; choose from music, scene, flamingo, fused"):
        load_captioner("lyrics")


QWEN_AUDIO_SLOT = "Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
AUDIO_PLACEHOLDER = {"music": QWEN_AUDIO_SLOT, "scene": QWEN_AUDIO_SLOT, "flamingo": "<sound>"}  # what each model's chat template puts before the prompt


@pytest.mark.parametrize("kind, prompt", [("music", None), ("scene", None), ("music", "Name the instruments."),
                                          ("flamingo", None), ("flamingo", "Name the instruments.")])
def test_the_prompt_reaches_the_processor_exactly_as_configured(tiny_dir, monkeypatch, kind, prompt):
    captioner = load_captioner(kind, weights=tiny_dir, prompt=prompt, settings=SHORT)
    expected = prompt or {"music": MUSIC_PROMPT, "scene": SCENE_PROMPT, "flamingo": MUSIC_PROMPT}[kind]
    calls = spy_processor(monkeypatch, captioner)
    captioner.caption([Clip(tone(440, 1.0, 16000), 16000)])
    (conversation,), (processed,) = ([c["conversation"] for c in calls if "conversation" in c],
                                     [c for c in calls if "text" in c])
    assert [item["text"] for item in conversation[0]["content"] if item["type"] == "text"] == [expected]
    (text,) = processed["text"]
    user_turn = text.split("<|im_start|>user\n")[1].split("<|im_end|>")[0]
    assert user_turn == AUDIO_PLACEHOLDER[kind] + expected  # one audio slot; the template adds nothing to the prompt
    assert captioner.provenance()["prompt"] == expected


@pytest.mark.parametrize("kind, mask", [("music", "feature_attention_mask"), ("flamingo", "input_features_mask")])
def test_audio_reaches_the_model_at_its_feature_extractors_rate(tiny_dir, monkeypatch, kind, mask):
    captioner = load_captioner(kind, weights=tiny_dir, settings=SHORT)
    assert captioner.sample_rate == 16000  # Whisper features
    calls = spy_processor(monkeypatch, captioner)
    seen = {}
    real_forward = type(captioner.model).forward

    @functools.wraps(real_forward)  # generate() reads forward's signature
    def forward(self, *args, **kwargs):
        if kwargs.get("input_features") is not None:
            seen["frames"] = int(kwargs[mask].sum())
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(type(captioner.model), "forward", forward)
    captioner.caption([Clip(tone(1000.0, 3.0, 32000), 32000)])
    (processed,) = [c for c in calls if "audio" in c]
    (audio,) = processed["audio"]
    assert processed["sampling_rate"] == 16000 and len(audio) == 3 * 16000
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    assert np.fft.rfftfreq(len(audio), 1 / 16000)[spectrum.argmax()] == pytest.approx(1000.0, abs=0.5)
    assert seen["frames"] == 300  # 3 s of 10 ms hops reached the audio encoder


def test_a_span_cut_from_a_recording_holds_exactly_its_samples_and_frames():
    rate, fps = 16000, 20
    audio = np.arange(6 * rate, dtype=np.float32) / rate
    frames = (np.arange(6 * fps) % 256).astype(np.uint8)[:, None, None, None] * np.ones((1, 8, 8, 3), np.uint8)
    clip = cut_span(audio, rate, 2.0, 4.0, frames, np.arange(6 * fps) / fps, name="rec0#1")
    np.testing.assert_array_equal(clip.audio, audio[2 * rate: 4 * rate])
    np.testing.assert_array_equal(clip.frames, frames[40:80])
    np.testing.assert_allclose(clip.timestamps, np.arange(40) / fps)
    with pytest.raises(ValueError, match=r"rec0#1: span \[5.0, 7.0\) s is outside the recording \(6.000 s"):
        cut_span(audio, rate, 5.0, 7.0, frames, np.arange(6 * fps) / fps, name="rec0#1")


def test_the_fused_captioner_receives_the_clips_own_frames_and_audio_span(fused, monkeypatch):
    rate, fps = 16000, 20
    audio = np.sin(np.arange(6 * rate) * 0.01).astype(np.float32)
    frames = np.arange(6 * fps, dtype=np.uint8)[:, None, None, None] * np.ones((1, 32, 32, 3), np.uint8)
    clip = cut_span(audio, rate, 2.0, 4.0, frames, np.arange(6 * fps) / fps)
    calls = spy_processor(monkeypatch, fused)
    (caption,) = fused.caption([clip])
    (processed,) = [c for c in calls if "videos" in c]
    (video,), (sound,) = processed["videos"], processed["audio"]
    assert [int(f[0, 0, 0]) for f in video] == [40, 50, 60, 70]  # 2 frames a second, all inside [2 s, 4 s)
    np.testing.assert_array_equal(sound, audio[2 * rate: 4 * rate])
    assert processed["load_audio_from_video"] and processed["audio_from_video_indices"] == [0]
    assert caption


@pytest.mark.parametrize("kind", ["music", "fused", "flamingo"])
def test_tiny_captioners_write_a_caption_and_the_same_seed_gives_the_same_one(tiny_dir, kind):
    rate = 16000
    clip = Clip(tone(330, 2.0, rate), rate, np.random.default_rng(0).integers(0, 255, (40, 32, 32, 3), np.uint8),
                np.arange(40) / 20)
    sampled = GenerationSettings(max_new_tokens=8, do_sample=True, seed=7)
    captioner = load_captioner(kind, weights=tiny_dir, settings=sampled)
    first = captioner.caption([clip, clip])
    assert all(first) and captioner.caption([clip, clip]) == first
    reloaded = load_captioner(kind, weights=tiny_dir, settings=sampled)
    assert reloaded.caption([clip, clip]) == first
    assert captioner.provenance()["generation"] == {"max_new_tokens": 8, "do_sample": True, "temperature": 1.0,
                                                    "top_p": 1.0, "seed": 7}


@pytest.mark.parametrize("kind, folder", [("music", "Qwen2-Audio-7B-Instruct"), ("fused", "Qwen2.5-Omni-7B"),
                                          ("flamingo", "audio-flamingo-3-hf")])
def test_missing_weights_fail_in_one_line_naming_the_folder(tmp_path, kind, folder):
    with pytest.raises(MissingWeightsError) as err:
        load_captioner(kind, weights=tmp_path)
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / folder) in message
    assert f"<weights dir>/{folder}/ or the Hugging Face cache" in message


def test_a_folder_without_weights_is_refused_naming_the_file(tiny_dir, tmp_path):
    folder = shutil.copytree(tiny_path(tiny_dir, "captioner_qwen2_audio"), tmp_path / "Qwen2-Audio-7B-Instruct")
    (folder / "model.safetensors").unlink()
    with pytest.raises(MissingWeightsError, match=f"'model.safetensors' .* not found in {folder}"):
        load_captioner("music", weights=tmp_path)


def test_a_tokenizer_with_an_almost_empty_vocabulary_is_refused(tiny_dir, tmp_path):
    """What transformers 5 builds offline when the vocabulary is absent: Qwen2Tokenizer with one token."""
    from transformers import Qwen2Tokenizer

    folder = shutil.copytree(tiny_path(tiny_dir, "captioner_qwen2_audio"), tmp_path / "Qwen2-Audio-7B-Instruct")
    empty = Qwen2Tokenizer(extra_special_tokens={"audio_token": "<|AUDIO|>", "audio_bos_token": "<|audio_bos|>",
                                                 "audio_eos_token": "<|audio_eos|>"})
    empty.add_tokens(["<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"], special_tokens=True)
    empty.save_pretrained(folder)
    with pytest.raises(TokenizerError, match=f"tokenizer in {folder} has 4 tokens but the language model's "):
        load_captioner("music", weights=tmp_path)


def test_weights_check_names_the_captioners_folders(tiny_dir, tmp_path, capsys):
    from expotion.cli.main import main

    assert main(["weights", "check", "--weights-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    for model in MODELS.values():
        assert f"MISSING  captioner_{model.key}" in out and f"<weights dir>/{model.folder}/" in out
    main(["weights", "check", "--weights-dir", str(tiny_dir)])
    out = capsys.readouterr().out
    for key in CAPTIONING:
        assert f"present  {key:28s} {tiny_path(tiny_dir, key)}" in out


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["music", "fused", "flamingo"])
def test_the_real_classes_run_forward_on_cuda_in_bf16(tiny_dir, kind):
    captioner = load_captioner(kind, weights=tiny_dir, settings=SHORT, device="cuda", dtype=torch.bfloat16)
    assert captioner.model.dtype == torch.bfloat16 and captioner.model.device.type == "cuda"
    rate = 16000
    clip = Clip(tone(440, 2.0, rate), rate, np.zeros((40, 32, 32, 3), np.uint8), np.arange(40) / 20)
    text = captioner.processor.apply_chat_template(captioner.conversation(), add_generation_prompt=True,
                                                   tokenize=False)
    inputs = captioner.model_inputs([clip], [text]).to("cuda")
    inputs = {k: v.to(torch.bfloat16) if torch.is_floating_point(v) else v for k, v in inputs.items()}
    with torch.no_grad():
        logits = captioner.model(**inputs, **captioner.generate_options()).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()
    assert captioner.caption([clip])
