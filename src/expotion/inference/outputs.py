"""What generation writes, and the checks that run before any model loads: output paths that would overwrite an input
or each other are refused, wavs are renamed into place only when complete."""
from __future__ import annotations

from pathlib import Path

import soundfile as sf
import torch

from expotion.core.atomic import atomic_path
from expotion.core.outputs import OutputError, prepare_output, same_file
from expotion.data.clips import CachedClip
from expotion.data.media import read_music
from expotion.data.video_writing import MUX_SUFFIXES
from expotion.musicgen.windows import decoded_chunks


def check_video_outputs(video: Path, out: Path, mux: Path | None) -> None:
    """Refuse outputs that would overwrite the input video or each other, and create their folders.

    Called before any model is loaded, so a bad path costs nothing.
    """
    prepare_output(out, {"input video": video}, "output wav", (".wav",))
    if mux is not None:
        prepare_output(mux, {"input video": video, "output wav": out}, "muxed video", MUX_SUFFIXES)


def check_batch_folders(out_dir: Path, reference_dir: Path | None) -> None:
    """Refuse a reference folder that is the output folder: each clip's reference and generated wav share a name."""
    if reference_dir is not None and same_file(out_dir, reference_dir):
        raise OutputError(f"--reference-dir {reference_dir} is --out-dir {out_dir}: each clip's generated wav would "
                          "replace its reference; choose another folder")


def write_wav(musicgen, tokens: torch.Tensor, duration_s: float, path: Path) -> None:
    """Decode ``tokens`` chunk by chunk into a mono wav, renamed into place when complete."""
    with atomic_path(path) as tmp, sf.SoundFile(tmp, "w", musicgen.sample_rate, 1) as f:
        for piece in decoded_chunks(musicgen, tokens, duration_s):
            f.write(piece[0])


def write_reference(clip: CachedClip, path: Path, sample_rate: int) -> None:
    """The clip's original music, cut from its source as the precompute stage cut it."""
    audio = read_music(clip.source, clip.audio_source, sample_rate)
    start = int(round(clip.start_s * sample_rate))
    with atomic_path(path) as tmp:
        sf.write(tmp, audio[start : start + int(round(clip.duration_s * sample_rate))], sample_rate)
