"""Tiny random stand-ins of the captioning models, saved as their hub repos are, for tests and the offline demo.

Same classes, tiny configurations: a byte-level BPE tokenizer trained here on a
few sentences (it round-trips any text, and carries the chat and media
special tokens the processors look up), the real processors with their
feature extractors at the real sample rate, and random weights. They load
through :func:`expotion.captioners.models.load` like the released folders;
their captions are noise.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

CORPUS = ("Please describe the music.", "A calm piano melody with soft drums and a warm bass line.",
          "An upbeat pop song with bright synths, handclaps and a fast tempo.",
          "The scene is a quiet street at night where a person walks alone in the rain.")
AUDIO_TOKENS = {"audio_token": "<|AUDIO|>", "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>"}
SOUND_TOKEN = "<sound>"  # Audio Flamingo 3's audio placeholder, one added token
VISION_TOKENS = {"image_token": "<|IMAGE|>", "video_token": "<|VIDEO|>", "vision_bos_token": "<|vision_bos|>",
                 "vision_eos_token": "<|vision_eos|>"}
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")
AUDIO_SECONDS = 4  # the stand-ins' feature window (the real models read 30 s); longer audio is cut by the processor
TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 1, "max_position_embeddings": 2048}
AUDIO_ENCODER = {"num_mel_bins": 128, "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 32,
                 "d_model": 16, "max_source_positions": AUDIO_SECONDS * 50}
OMNI_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'video' %}<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif item['type'] == 'audio' %}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif item['type'] == 'image' %}<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# Audio Flamingo 3's template as its hub repo ships it: a default system turn, then per user turn the sound
# placeholder (when the turn holds audio) followed by the turn's text items joined
FLAMINGO_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% if message['content'] | selectattr('type', 'equalto', 'audio') | list %}<sound>{% endif %}"
    "{% for item in message['content'] if item['type'] == 'text' %}{{ item['text'] }}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_tokenizer(named: dict[str, str], unnamed: tuple[str, ...] = ()):
    """A Qwen2 tokenizer (byte-level BPE) with a few hundred tokens, the chat tokens, the ``named`` media tokens (the
    tokenizer's attributes, as Qwen's processors look them up) and ``unnamed`` ones (found by their text)."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=320, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    learned = json.loads(bpe.to_str())["model"]
    tokenizer = Qwen2Tokenizer(vocab=learned["vocab"], merges=[tuple(m) for m in learned["merges"]],
                               extra_special_tokens=named)
    tokenizer.add_tokens([AddedToken(t, special=True) for t in (*CHAT_TOKENS, *named.values(), *unnamed)], special_tokens=True)
    return tokenizer


def whisper_features(**options):
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, chunk_length=AUDIO_SECONDS, **options)


def quiet_save(model, path: Path) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model.save_pretrained(path)


def save_tiny_audio(path: str | Path, seed: int = 0) -> Path:
    """A tiny ``Qwen2AudioForConditionalGeneration`` + ``Qwen2AudioProcessor`` folder (about 0.2 MB)."""
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor

    path = Path(path)
    tokenizer = tiny_tokenizer(AUDIO_TOKENS)
    Qwen2AudioProcessor(feature_extractor=whisper_features(), tokenizer=tokenizer).save_pretrained(path)
    config = Qwen2AudioConfig(audio_config=AUDIO_ENCODER, text_config={"model_type": "qwen2", "vocab_size": len(tokenizer), **TEXT},
                              audio_token_index=tokenizer.convert_tokens_to_ids(AUDIO_TOKENS["audio_token"]))
    torch.manual_seed(seed)
    quiet_save(Qwen2AudioForConditionalGeneration(config), path)
    return path


def save_tiny_omni(path: str | Path, seed: int = 0) -> Path:
    """A tiny Qwen2.5-Omni folder: the full model's config with the talker off, the thinker's weights (about 0.3 MB)."""
    from transformers import (Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration, Qwen2_5OmniProcessor,
                              Qwen2VLImageProcessor, Qwen2VLVideoProcessor)
    from transformers.utils import logging as hf_logging

    path = Path(path)
    tokenizer = tiny_tokenizer({**AUDIO_TOKENS, **VISION_TOKENS})
    pixels = {"shortest_edge": 56 * 56, "longest_edge": 112 * 112}
    Qwen2_5OmniProcessor(image_processor=Qwen2VLImageProcessor(size=pixels),
                         video_processor=Qwen2VLVideoProcessor(size=pixels, cap_pixels_per_frame=True),
                         feature_extractor=whisper_features(), tokenizer=tokenizer,
                         chat_template=OMNI_CHAT_TEMPLATE).save_pretrained(path)
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in {**AUDIO_TOKENS, **VISION_TOKENS}.items()}
    thinker = {
        "audio_config": {**AUDIO_ENCODER, "n_window": 50, "output_dim": TEXT["hidden_size"]},
        "vision_config": {"depth": 1, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2,
                          "out_hidden_size": TEXT["hidden_size"], "fullatt_block_indexes": [0], "window_size": 56},
        "text_config": {"vocab_size": len(tokenizer), **TEXT,
                        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}},
        "audio_token_index": ids["audio_token"], "image_token_index": ids["image_token"],
        "video_token_index": ids["video_token"], "audio_start_token_id": ids["audio_bos_token"],
        "audio_end_token_id": ids["audio_eos_token"], "vision_start_token_id": ids["vision_bos_token"],
        "vision_end_token_id": ids["vision_eos_token"], "vision_token_id": ids["image_token"],
        "user_token_id": tokenizer.convert_tokens_to_ids("user"),
    }
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the unused talker's default token ids exceed the tiny vocabulary
    try:
        config = Qwen2_5OmniConfig(thinker_config=thinker, enable_audio_output=False)
        torch.manual_seed(seed)
        quiet_save(Qwen2_5OmniForConditionalGeneration(config), path)
    finally:
        hf_logging.set_verbosity(verbosity)
    return path


def save_tiny_flamingo(path: str | Path, seed: int = 0) -> Path:
    """A tiny ``AudioFlamingo3ForConditionalGeneration`` + ``AudioFlamingo3Processor`` folder (about 0.2 MB), with
    the hub repo's chat template and its feature extractor's attention mask (the processor windows audio by it)."""
    from transformers import AudioFlamingo3Config, AudioFlamingo3ForConditionalGeneration, AudioFlamingo3Processor

    path = Path(path)
    tokenizer = tiny_tokenizer({}, unnamed=(SOUND_TOKEN,))
    AudioFlamingo3Processor(feature_extractor=whisper_features(return_attention_mask=True), tokenizer=tokenizer,
                            chat_template=FLAMINGO_CHAT_TEMPLATE, audio_token=SOUND_TOKEN).save_pretrained(path)
    encoder = {"num_mel_bins": 128, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
               "hidden_size": 16, "max_source_positions": AUDIO_SECONDS * 50}
    config = AudioFlamingo3Config(audio_config=encoder,
                                  text_config={"model_type": "qwen2", "vocab_size": len(tokenizer), **TEXT},
                                  audio_token_id=tokenizer.convert_tokens_to_ids(SOUND_TOKEN))
    torch.manual_seed(seed)
    quiet_save(AudioFlamingo3ForConditionalGeneration(config), path)
    return path
