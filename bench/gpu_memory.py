"""Estimated GPU memory of one training step per MusicGen size at the paper's batch (an estimate, not a measurement).

    python bench/gpu_memory.py [--batch-size 10] [--seconds 10] [--sizes small,medium,large]

Parameter counts are exact: each size's LM is built by audiocraft's own builder on the ``meta`` device (no weights,
no memory) and the Expotion adaptor is attached to it, with ``paper.yaml``'s adaptor settings (every layer adapted).
Activation memory is computed from the shapes a step keeps for backward, with the per-layer rule of Korthikanti et
al. (2022, "Reducing activation recomputation in large transformer models"): 34·s·b·h bytes per transformer layer in
16-bit activations when attention scores are not stored (MusicGen trains with memory-efficient attention), for
s positions of width h at batch b. What the rule leaves out (allocator fragmentation, cuDNN/cuBLAS workspaces, the CUDA
context of about 0.5 GB) is why these are estimates until measured on a GPU.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import replace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from expotion.methods.expotion.adaptor import AdaptorConfig, ConditionAdaptor
from expotion.methods.expotion.embedding import VisualConfig
from expotion.musicgen.loading import TinyMusicGenConfig, tiny_lm_cfg

# audiocraft's released sizes (its config/model/lm/musicgen_lm.yaml and model_scale overrides)
SIZES = {"small": (1024, 24, 16), "medium": (1536, 48, 24), "large": (2048, 48, 32)}
T5_DIM = 768  # t5-base's width: MusicGen's text output_proj is T5_DIM -> dim
GiB = 1024 ** 3
FEATURES = {"marlin": 768, "synchformer": 768}  # paper.yaml: face (MARLIN) + motion (Synchformer) streams


def build_lm(dim: int, layers: int, heads: int):
    """The LM of a released MusicGen size on the meta device, with cross-attention to the text as released."""
    from audiocraft.models import builders

    cfg = tiny_lm_cfg(TinyMusicGenConfig(dim=dim, num_layers=layers, num_heads=heads, card=2048, text_dim=T5_DIM))
    cfg["transformer_lm"]["cross_attention"] = True
    cfg["device"] = "meta"
    with torch.device("meta"):
        return builders.get_lm_model(OmegaConf.create(cfg))


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def estimate(size: str, batch: int, seconds: float, frame_rate: float = 50.0, text_tokens: int = 32) -> dict:
    dim, layers, heads = SIZES[size]
    lm = build_lm(dim, layers, heads)
    musicgen = count(lm) - count(lm.condition_provider) + T5_DIM * dim + dim  # the T5 conditioner's output_proj
    with torch.device("meta"):
        adaptor = ConditionAdaptor(lm, replace(AdaptorConfig(), n_adapted=layers, max_seconds=seconds,
                                               visual=VisualConfig(face=True, motion="synchformer")),
                                   FEATURES, frame_rate)
    trained = count(adaptor)
    frames = int(seconds * frame_rate) + lm.n_q - 1  # the delay pattern adds n_q - 1 steps
    prefix = int(seconds * frame_rate)  # H^p: one position per EnCodec frame of the window
    per_layer = 34 * dim * batch * (frames + prefix)  # self-attention + FFN on the sequence and on the prefix
    per_layer += 10 * dim * batch * frames + 4 * dim * batch * text_tokens  # cross-attention: q, out, k/v of the text
    parts = {
        "MusicGen weights (fp32, frozen)": 4 * musicgen,
        "bf16 copies made by autocast": 2 * musicgen,
        "adaptor weights, grads, AdamW (fp32)": 16 * trained,
        "activations kept for backward (bf16)": layers * per_layer,
        "logits and their gradient (fp32)": 2 * 4 * batch * frames * lm.n_q * lm.card,
    }
    return {"size": size, "musicgen_params": musicgen, "adaptor_params": trained, "parts": parts,
            "total": sum(parts.values())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=10, help="clips per GPU (paper.yaml: 10, §4.2)")
    p.add_argument("--seconds", type=float, default=10.0, help="clip length (the paper's 10 s)")
    p.add_argument("--sizes", default="small,medium,large")
    args = p.parse_args()
    print(f"ESTIMATES (not measured on a GPU): one training step, batch {args.batch_size} x {args.seconds:g} s per GPU, "
          "bf16-mixed, every layer adapted (paper.yaml)")
    for size in args.sizes.split(","):
        est = estimate(size, args.batch_size, args.seconds)
        print(f"\nMusicGen {size}: {est['musicgen_params'] / 1e6:.1f}M parameters (frozen), adaptor "
              f"{est['adaptor_params'] / 1e6:.2f}M (trained)")
        for name, nbytes in est["parts"].items():
            print(f"  {name:40s} {nbytes / GiB:6.2f} GiB")
        print(f"  {'total':40s} {est['total'] / GiB:6.2f} GiB")


if __name__ == "__main__":
    main()
