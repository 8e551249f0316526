"""Music from MusicGen with an optional adaptor: one prefix per clip, reused at every decoding step."""
from __future__ import annotations

import torch

from .adaptor import ConditionAdaptor
from .rates import StreamRate


@torch.no_grad()
def generate_window(musicgen, prompt: str, duration_s: float, adaptor: ConditionAdaptor | None = None,
                    feats: dict[str, torch.Tensor] | None = None, rates: dict[str, StreamRate] | None = None,
                    start_s: float = 0.0, seed: int = 0, cfg_coef: float = 3.0, top_k: int = 250) -> torch.Tensor:
    """Tokens (1, K, T) for one window of at most the model's max duration.

    MusicGen's own ``generate`` runs classifier-free guidance on the text; the
    visual prefix, built once, is identical in both guidance branches.
    Without an adaptor this is plain text-only MusicGen.
    """
    musicgen.set_generation_params(duration=duration_s, top_k=min(top_k, musicgen.lm.card), cfg_coef=cfg_coef)
    torch.manual_seed(seed)
    if adaptor is None:
        return musicgen.generate([prompt], return_tokens=True)[1]
    frames = int(round(duration_s * musicgen.frame_rate))
    steps = musicgen.lm.pattern_provider.get_pattern(frames).num_sequence_steps
    prefix = adaptor.prefix(feats, rates, steps, torch.tensor([start_s], device=adaptor.h0.device))
    with adaptor.attached(prefix):
        torch.manual_seed(seed)
        return musicgen.generate([prompt], return_tokens=True)[1]
