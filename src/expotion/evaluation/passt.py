"""PaSST, the AudioSet tagger behind KL and IS: its mel front end and the transformer at inference.

The module names follow the released ``passt-s-f128-p16-s10-ap.476-swa.pt``
state dict (``patch_embed.proj``, ``cls_token``, ``dist_token``,
``new_pos_embed``, ``freq_new_pos_embed``, ``time_new_pos_embed``,
``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm``,
``head.0`` (LayerNorm), ``head.1`` (Linear), ``head_dist``), so that file loads
strictly. Patchout only acts in training and is absent here. Width, depth,
MLP size and the patch grid are read from the state dict; the head count is
width / 64, as in every released PaSST.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio.compliance.kaldi as kaldi
from torch import nn

from expotion.core.layers import Attention, Mlp
from expotion.evaluation.audio import split_chunks
from expotion.evaluation.batching import device_of, run_windows

SAMPLE_RATE = 32000
N_MELS = 128
N_FFT = 1024
WIN_LENGTH = 800
HOP = 320
F_MAX = 15000.0  # sr / 2 minus half of the 2 kHz augmentation range the model was trained with
PREEMPHASIS = 0.97
CHUNK_SECONDS = 10.0  # the training clip length; longer audio is cut into chunks of this size
MIN_CHUNK_SECONDS = 0.15  # shorter trailing chunks are dropped, as AudioCraft's PaSST KL does
HEAD_DIM = 64
N_CLASSES = 527


class MelFrontEnd(nn.Module):
    """32 kHz waveform -> (B, 1, 128, T) normalised log-mel, PaSST's evaluation-mode preprocessing.

    Pre-emphasis (x[n+1] - 0.97 x[n]), STFT (1024-point FFT, 800-sample
    symmetric Hann window, hop 320, centred), power, Kaldi-style mel banks
    0-15 kHz, log(mel + 1e-5), then (x + 4.5) / 5.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("window", torch.hann_window(WIN_LENGTH, periodic=False), persistent=False)
        banks, _ = kaldi.get_mel_banks(N_MELS, N_FFT, float(SAMPLE_RATE), 0.0, F_MAX, 100.0, -500.0, 1.0)
        self.register_buffer("mel_basis", F.pad(banks, (0, 1)), persistent=False)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        x = wav[:, 1:] - PREEMPHASIS * wav[:, :-1]
        spec = torch.stft(x, N_FFT, hop_length=HOP, win_length=WIN_LENGTH, window=self.window,
                          center=True, return_complex=True)
        mel = torch.matmul(self.mel_basis, spec.abs() ** 2)
        return ((torch.log(mel + 1e-5) + 4.5) / 5.0)[:, None]


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, dim: int, patch: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, dim, kernel_size=patch, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class PaSST(nn.Module):
    """Distilled ViT over overlapping 16x16 mel patches; logits from the mean of the class and distillation tokens."""

    def __init__(self, dim: int = 768, depth: int = 12, mlp_hidden: int = 3072, patch: int = 16, stride: int = 10,
                 freq_patches: int = 12, time_patches: int = 99, n_classes: int = N_CLASSES) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(dim, patch, stride)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.new_pos_embed = nn.Parameter(torch.zeros(1, 2, dim))
        self.freq_new_pos_embed = nn.Parameter(torch.zeros(1, dim, freq_patches, 1))
        self.time_new_pos_embed = nn.Parameter(torch.zeros(1, dim, 1, time_patches))
        self.blocks = nn.Sequential(*[Block(dim, max(1, dim // HEAD_DIM), mlp_hidden) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, n_classes))
        self.head_dist = nn.Linear(dim, n_classes)
        for p in (self.cls_token, self.dist_token, self.new_pos_embed, self.freq_new_pos_embed, self.time_new_pos_embed):
            nn.init.trunc_normal_(p, std=0.02)

    @property
    def max_time_patches(self) -> int:
        return self.time_new_pos_embed.shape[-1]

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, 1, 128, T) -> (B, n_classes) logits."""
        x = self.patch_embed(mel)
        t = x.shape[-1]
        if t > self.max_time_patches:
            raise ValueError(f"input has {t} time patches; this PaSST takes at most {self.max_time_patches}")
        x = x + self.time_new_pos_embed[..., :t] + self.freq_new_pos_embed
        x = x.flatten(2).transpose(1, 2)
        b = x.shape[0]
        cls = self.cls_token.expand(b, -1, -1) + self.new_pos_embed[:, :1]
        dist = self.dist_token.expand(b, -1, -1) + self.new_pos_embed[:, 1:]
        x = self.norm(self.blocks(torch.cat([cls, dist, x], dim=1)))
        return self.head((x[:, 0] + x[:, 1]) / 2)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> PaSST:
        """Build with the sizes the state dict holds, then load it strictly.

        A 3-channel patch convolution (an ImageNet-initialised file) is summed
        over its input channels, the conversion PaSST itself applies for mono input.
        """
        state = dict(state["model"] if isinstance(state.get("model"), dict) else state)
        try:
            proj = state["patch_embed.proj.weight"]
            dim, _, patch, _ = proj.shape
            freq = int(state["freq_new_pos_embed"].shape[2])
            time = int(state["time_new_pos_embed"].shape[3])
            depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
            hidden = int(state["blocks.0.mlp.fc1.weight"].shape[0])
            n_classes = int(state["head.1.weight"].shape[0])
        except KeyError as err:
            raise ValueError(f"not a PaSST state dict: key {err} is missing") from None
        if proj.shape[1] == 3:
            state["patch_embed.proj.weight"] = proj.sum(dim=1, keepdim=True)
        stride = (N_MELS - patch) // (freq - 1) if freq > 1 else patch
        model = cls(int(dim), depth, hidden, int(patch), stride, freq, time, n_classes)
        model.load_state_dict(state, strict=True)
        return model.eval().requires_grad_(False)


class Tagger(nn.Module):
    """Front end + PaSST: 32 kHz waveform chunks -> AudioSet logits."""

    def __init__(self, net: PaSST) -> None:
        super().__init__()
        self.mel = MelFrontEnd()
        self.net = net

    @torch.no_grad()
    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.net(self.mel(wav))


def windows(samples_32k: np.ndarray) -> list[torch.Tensor]:
    """A clip's model inputs: its 10 s chunks (a trailing chunk under 0.15 s is dropped)."""
    chunks = split_chunks(samples_32k, int(CHUNK_SECONDS * SAMPLE_RATE), int(MIN_CHUNK_SECONDS * SAMPLE_RATE))
    if not chunks:
        seconds = len(samples_32k) / SAMPLE_RATE
        raise ValueError(f"audio of {seconds:.3f} s is too short for PaSST (needs at least {MIN_CHUNK_SECONDS} s)")
    return [torch.from_numpy(np.ascontiguousarray(c, np.float32)) for c in chunks]


@torch.no_grad()
def clip_logits(tagger: Tagger, samples_32k: np.ndarray) -> np.ndarray:
    """(n_chunks, n_classes) logits of the 10 s chunks of one clip, computed on the tagger's device."""
    return run_windows(tagger, [windows(samples_32k)], 1, device_of(tagger))[0].numpy()


def save_tiny(path: Path, seed: int = 0, dim: int = 64, depth: int = 2, mlp_hidden: int = 128) -> Path:
    """A randomly initialised PaSST in the released file's format (plain state dict), full 10 s patch grid."""
    torch.manual_seed(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(PaSST(dim, depth, mlp_hidden).state_dict(), path)
    return path
