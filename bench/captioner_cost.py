"""Estimated memory and time per clip of the real captioning models on one GPU, from their configurations.

Nothing here is measured: parameter counts come from the transformers classes
built on the ``meta`` device with the released models' sizes (or a real
``config.json`` given with ``--config``), and time is a roofline estimate:
prefill costs ``2 × parameters × tokens`` FLOPs at ``--tflops``, and each
generated token reads every weight once at ``--bandwidth`` (batch 1). Token
counts follow the processors: Whisper features pad audio to 30 s for
Qwen2-Audio and Audio Flamingo 3 (their encoders always see 3000 frames), 25
audio tokens a second reach the language model; Qwen2.5-Omni reads video at 2 frames a second in
14-pixel patches, pairs of frames and 2×2 patches merged into one token.
"""
from __future__ import annotations

import argparse
import math

import torch

QWEN2_AUDIO = {  # Qwen/Qwen2-Audio-7B-Instruct's config.json: a Whisper-large-v3-sized encoder, Qwen-7B text
    "audio_config": {"d_model": 1280, "encoder_layers": 32, "encoder_attention_heads": 20, "encoder_ffn_dim": 5120,
                     "num_mel_bins": 128, "max_source_positions": 1500},
    "text_config": {"model_type": "qwen2", "vocab_size": 156032, "hidden_size": 4096, "intermediate_size": 11008,
                    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32},
}
QWEN2_5_OMNI_THINKER = {  # Qwen/Qwen2.5-Omni-7B's thinker_config
    "audio_config": {"d_model": 1280, "encoder_layers": 32, "encoder_attention_heads": 20, "encoder_ffn_dim": 5120,
                     "output_dim": 3584},
    "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                      "out_hidden_size": 3584},
    "text_config": {"vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                    "num_attention_heads": 28, "num_key_value_heads": 4},
}
AUDIO_FLAMINGO_3 = {  # nvidia/audio-flamingo-3-hf's config.json: a Whisper-large-v3-sized encoder, Qwen2.5-7B text
    "audio_config": {"hidden_size": 1280, "num_hidden_layers": 32, "num_attention_heads": 20,
                     "intermediate_size": 5120, "num_mel_bins": 128, "max_source_positions": 1500},
    "text_config": {"model_type": "qwen2", "vocab_size": 151672, "hidden_size": 3584, "intermediate_size": 18944,
                    "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4},
}
KINDS = ("music", "flamingo", "fused")
AUDIO_TOKENS_PER_SECOND = 25  # 100 mel frames a second, halved by the encoder's stride, halved by its pooling
PROMPT_TOKENS = 40  # chat template and prompt


def build_on_meta(kind: str, config_path: str | None):
    import transformers

    if kind == "music":
        config = (transformers.AutoConfig.from_pretrained(config_path) if config_path
                  else transformers.Qwen2AudioConfig(**QWEN2_AUDIO))
        cls = transformers.Qwen2AudioForConditionalGeneration
    elif kind == "flamingo":
        config = (transformers.AutoConfig.from_pretrained(config_path) if config_path
                  else transformers.AudioFlamingo3Config(**AUDIO_FLAMINGO_3))
        cls = transformers.AudioFlamingo3ForConditionalGeneration
    else:
        config = (transformers.AutoConfig.from_pretrained(config_path).thinker_config if config_path
                  else transformers.Qwen2_5OmniThinkerConfig(**QWEN2_5_OMNI_THINKER))
        cls = transformers.Qwen2_5OmniThinkerForConditionalGeneration
    with torch.device("meta"):
        model = cls(config)
    return model, config


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def encoder_params(model, name: str) -> int:
    """Parameters of the submodule called ``name`` (``audio_tower``, ``visual``), 0 when the model has none."""
    return next((count(m) for n, m in model.named_modules() if n.split(".")[-1] == name), 0)


def video_tokens(seconds: float, height: int, width: int, fps: float = 2.0) -> tuple[int, int]:
    """(patches the vision encoder sees, tokens the language model sees) for a clip's frames, as the processor resizes them."""
    lo, hi, unit = 128 * 28 * 28, 768 * 28 * 28, 28
    scale = math.sqrt(min(max(height * width, lo), hi) / (height * width))
    h, w = max(unit, round(height * scale / unit) * unit), max(unit, round(width * scale / unit) * unit)
    grids = math.ceil(seconds * fps / 2)
    patches = grids * (h // 14) * (w // 14)
    return patches, patches // 4


def estimate(kind: str, args) -> None:
    model, config = build_on_meta(kind, args.config if kind == args.config_kind else None)
    text = config.text_config
    total = count(model)
    audio_llm_tokens = round(args.seconds * AUDIO_TOKENS_PER_SECOND)
    encoder_positions = 1500 if kind != "fused" else audio_llm_tokens * 2  # Qwen2-Audio and AF3 pad to 30 s
    vision_patches, vision_llm_tokens = video_tokens(args.seconds, args.height, args.width) if kind == "fused" else (0, 0)
    prompt = PROMPT_TOKENS + audio_llm_tokens + vision_llm_tokens
    head_dim = text.hidden_size // text.num_attention_heads
    kv_bytes = 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim * 2 * (prompt + args.new_tokens)
    weight_bytes = 2 * total  # bf16
    audio_params = encoder_params(model, "audio_tower")
    vision_params = encoder_params(model, "visual")
    llm_params = total - audio_params - vision_params
    prefill_flops = 2 * (audio_params * encoder_positions + vision_params * vision_patches + llm_params * prompt)
    prefill_s = prefill_flops / (args.tflops * 1e12)
    decode_s = args.new_tokens * weight_bytes / (args.bandwidth * 1e12)
    print(f"{kind:8s} {type(model).__name__}")
    print(f"  parameters: {total / 1e9:.2f} B (audio encoder {audio_params / 1e9:.2f} B, vision encoder "
          f"{vision_params / 1e9:.2f} B, language model {llm_params / 1e9:.2f} B)")
    print(f"  tokens per {args.seconds:g} s clip: {prompt} in (audio {audio_llm_tokens}, video {vision_llm_tokens}), "
          f"{args.new_tokens} out")
    print(f"  estimated memory, batch 1, bf16: weights {weight_bytes / 2**30:.1f} GiB + KV cache "
          f"{kv_bytes / 2**30:.2f} GiB (+ activations, about 1–2 GiB)")
    print(f"  estimated time per clip, batch 1: prefill {prefill_s:.2f} s + decoding {decode_s:.1f} s "
          f"= {prefill_s + decode_s:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length (the paper's clips: 10 s)")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--new-tokens", type=int, default=200, help="caption length (the default max_new_tokens)")
    parser.add_argument("--tflops", type=float, default=150.0, help="sustained bf16 TFLOP/s (A100: ~50%% of 312)")
    parser.add_argument("--bandwidth", type=float, default=1.5, help="memory bandwidth in TB/s (A100 40 GB: 1.5)")
    parser.add_argument("--config", default=None, help="a real config.json folder to count instead of the sizes here")
    parser.add_argument("--config-kind", choices=KINDS, default="music")
    args = parser.parse_args()
    print("ESTIMATES from the configurations, not measurements")
    for kind in KINDS:
        estimate(kind, args)


if __name__ == "__main__":
    main()
