"""VGGish for FAD-VGG: the AudioSet VGG embedding network and its log-mel front end.

The network keeps the key layout of the PyTorch port's released state dict
(``features.{0,3,6,8,11,13}`` convolutions, ``embeddings.{0,2,4}`` linears), so
``vggish-10086976.pth`` loads strictly. Layer widths are read from the state
dict, which lets a small random file in the same format go through the same
loader. The embedding is taken before the final ReLU and without the PCA /
quantisation post-processing, as the FAD toolkit does.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from expotion.evaluation.batching import device_of, run_windows

SAMPLE_RATE = 16000
WINDOW_SECONDS = 0.025
HOP_SECONDS = 0.010
N_MELS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96  # 0.96 s of 10 ms frames, taken without overlap
CONV_INDICES = (0, 3, 6, 8, 11, 13)  # positions of the convolutions in ``features``
POOL_AFTER = (0, 3, 8, 13)  # a 2x2 max-pool follows these convolutions
LINEAR_INDICES = (0, 2, 4)
CONV_GRID = (EXAMPLE_FRAMES // 16, N_MELS // 16)  # (time, mel) cells left after four poolings


def hertz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale, as VGGish's feature code uses."""
    return 1127.0 * np.log1p(np.asarray(hz, np.float64) / 700.0)


def mel_matrix(n_fft: int, sr: int = SAMPLE_RATE) -> np.ndarray:
    """(n_fft // 2 + 1, N_MELS) triangular filters evenly spaced in mel between the band edges; DC row zeroed."""
    n_bins = n_fft // 2 + 1
    bin_mel = hertz_to_mel(np.linspace(0.0, sr / 2, n_bins))
    edges = np.linspace(hertz_to_mel(MEL_MIN_HZ), hertz_to_mel(MEL_MAX_HZ), N_MELS + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bin_mel[:, None] - lower) / (center - lower)
    falling = (upper - bin_mel[:, None]) / (upper - center)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0
    return weights


def log_mel_examples(samples: np.ndarray) -> np.ndarray:
    """16 kHz mono -> (n_examples, 96, 64) log-mel patches; an incomplete final patch is dropped.

    Periodic Hann window of 25 ms, 10 ms hop, magnitude spectrum with the FFT
    size rounded up to a power of two, log(mel + 0.01).
    """
    win = int(round(SAMPLE_RATE * WINDOW_SECONDS))
    hop = int(round(SAMPLE_RATE * HOP_SECONDS))
    n_fft = 2 ** int(np.ceil(np.log2(win)))
    x = np.asarray(samples, np.float64)
    n_frames = 1 + (len(x) - win) // hop if len(x) >= win else 0
    n_examples = n_frames // EXAMPLE_FRAMES
    if n_examples == 0:
        return np.zeros((0, EXAMPLE_FRAMES, N_MELS), np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(x, win)[::hop][:n_frames]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)
    magnitude = np.abs(np.fft.rfft(frames * window, n_fft))
    log_mel = np.log(magnitude @ mel_matrix(n_fft) + LOG_OFFSET)
    return log_mel[: n_examples * EXAMPLE_FRAMES].reshape(n_examples, EXAMPLE_FRAMES, N_MELS).astype(np.float32)


class VGGish(nn.Module):
    """VGG-style convolutions over (1, 96, 64) patches, then three linear layers."""

    def __init__(self, conv_channels: tuple[int, ...] = (64, 128, 256, 256, 512, 512),
                 linear_dims: tuple[int, ...] = (4096, 4096, 128)) -> None:
        super().__init__()
        if len(conv_channels) != len(CONV_INDICES) or len(linear_dims) != len(LINEAR_INDICES):
            raise ValueError(f"VGGish has {len(CONV_INDICES)} convolutions and {len(LINEAR_INDICES)} linear layers")
        layers: list[nn.Module] = []
        in_ch = 1
        for index, out_ch in zip(CONV_INDICES, conv_channels, strict=True):
            layers += [nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            if index in POOL_AFTER:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        flat = in_ch * CONV_GRID[0] * CONV_GRID[1]
        self.embeddings = nn.Sequential(
            nn.Linear(flat, linear_dims[0]), nn.ReLU(inplace=True),
            nn.Linear(linear_dims[0], linear_dims[1]), nn.ReLU(inplace=True),
            nn.Linear(linear_dims[1], linear_dims[2]), nn.ReLU(inplace=True),
        )

    @property
    def dim(self) -> int:
        return self.embeddings[4].out_features

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """(N, 1, 96, 64) -> (N, dim) embeddings before the final ReLU."""
        x = self.features(patches)
        x = x.permute(0, 2, 3, 1).flatten(1)  # channels-last flattening, the order the released weights expect
        return self.embeddings[:-1](x)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> VGGish:
        """Build with the widths the state dict holds, then load it strictly."""
        try:
            conv = tuple(int(state[f"features.{i}.weight"].shape[0]) for i in CONV_INDICES)
            linear = tuple(int(state[f"embeddings.{i}.weight"].shape[0]) for i in LINEAR_INDICES)
        except KeyError as err:
            raise ValueError(f"not a VGGish state dict: key {err} is missing") from None
        model = cls(conv, linear)
        model.load_state_dict(state, strict=True)
        return model.eval().requires_grad_(False)


def windows(samples_16k: np.ndarray) -> list[torch.Tensor]:
    """A clip's model inputs: one (1, 96, 64) log-mel patch per complete 0.96 s frame."""
    return list(torch.from_numpy(log_mel_examples(samples_16k))[:, None])


@torch.no_grad()
def embed(model: VGGish, samples_16k: np.ndarray, batch: int = 64) -> np.ndarray:
    """(n_frames, dim) float32 embeddings, one per complete 0.96 s frame, computed on the model's device."""
    out = run_windows(model, [windows(samples_16k)], batch, device_of(model))[0]
    return out.reshape(-1, model.dim).numpy()


def save_tiny(path: Path, seed: int = 0, conv_channels: tuple[int, ...] = (4, 8, 8, 8, 16, 16),
              linear_dims: tuple[int, ...] = (32, 32, 128)) -> Path:
    """A randomly initialised VGGish state dict in the released file's format (plain ``torch.save``)."""
    torch.manual_seed(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(VGGish(conv_channels, linear_dims).state_dict(), path)
    return path
