"""The frozen feature extractors of §3.1 behind one interface, with shape checks.

Both the precompute stage and ``generate`` build an :class:`Extractors` and call
:meth:`Extractors.video_features` on decoded frames, so features seen at
training and at inference come from the same code. Every output length is
checked against :mod:`expotion.rates`.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .extractors.marlin import MARLIN_FILE, load_marlin, save_tiny_marlin
from .extractors.motionformer import (
    CHECKPOINT_FILENAME,
    WEIGHTS_SUBDIR,
    MotionFormer,
    MotionFormerConfig,
    load_synchformer_visual,
    preprocess_segments,
    save_synchformer_format,
)
from .extractors.raft import FlowConfig, compute_flow, load_raft, save_tiny_raft
from .face import FaceDetector, FaceTrack, crop_faces, smooth_track, square_boxes
from .media import ClipFrames
from .musicgen import TinyMusicGenConfig, check_musicgen_available, encode_audio, load_musicgen, save_tiny_musicgen, text_hidden
from .rates import DEFAULT_RATES, Rates, check_shape, sample_indices
from .weights import MissingWeightsError, weights_dir

VISUAL = ("marlin", "synchformer", "raft")
EXTRACTORS = (*VISUAL, "codes", "t5")
GENERIC_PROMPT = "music with catchy melody"


@dataclass(frozen=True)
class ExtractorConfig:
    """Which weights each extractor loads and the sizes it runs at, and the profile that chose them."""

    profile: str = "real"
    weights_dir: str = ""
    musicgen: str = "facebook/musicgen-small"
    marlin_path: str = ""
    synchformer_path: str = ""
    synchformer: MotionFormerConfig = MotionFormerConfig()
    raft_variant: str = "large"
    raft_checkpoint: str | None = None
    flow: FlowConfig = FlowConfig()
    max_short_side: int = 512
    face_detect_fps: float = 5.0
    device: str = "cpu"

    def describe(self) -> dict:
        """What a cache records about the models that produced it."""
        return json.loads(json.dumps(asdict(self), default=str))


def real_profile(wdir: str | Path | None = None, **overrides) -> ExtractorConfig:
    """Released weights at their documented locations (see the README's weights table)."""
    root = weights_dir(wdir)
    return replace(
        ExtractorConfig(
            weights_dir=str(root),
            marlin_path=str(root / MARLIN_FILE),
            synchformer_path=str(root / WEIGHTS_SUBDIR / CHECKPOINT_FILENAME),
        ),
        **overrides,
    )


def tiny_profile(root: str | Path, seed: int = 0) -> ExtractorConfig:
    """Small random models of the same classes, written once in the released file formats."""
    root = Path(root)
    marlin = root / "marlin_vit_tiny.encoder.pt"
    synch = root / "synchformer_tiny.pt"
    raft = root / "raft_small_tiny.pth"
    musicgen = root / "musicgen_tiny"
    if not marlin.exists():
        save_tiny_marlin(root, seed=seed)
    if not synch.exists():
        torch.manual_seed(seed)
        save_synchformer_format(MotionFormer(MotionFormerConfig.tiny()), synch)
    if not raft.exists():
        save_tiny_raft(raft, "small", seed=seed)
    if not (musicgen / "state_dict.bin").exists():
        save_tiny_musicgen(musicgen, TinyMusicGenConfig(), seed=seed)
    return ExtractorConfig(
        profile="tiny",
        weights_dir=str(root),
        musicgen=str(musicgen),
        marlin_path=str(marlin),
        synchformer_path=str(synch),
        synchformer=MotionFormerConfig.tiny(),
        raft_variant="small",
        raft_checkpoint=str(raft),
        flow=FlowConfig(height=128, width=128, updates=6, pool=8),
        max_short_side=256,
    )


def check_available(cfg: ExtractorConfig, names: tuple[str, ...]) -> None:
    """Raise one error listing every missing weight file, before any work starts."""
    from .extractors.raft import RAFT_FILES
    from .weights import torch_hub_checkpoints

    problems = []
    wanted = {
        "marlin": [(cfg.marlin_path, "MARLIN encoder")],
        "synchformer": [(cfg.synchformer_path, "Synchformer checkpoint")],
        "raft": [(cfg.raft_checkpoint or str(torch_hub_checkpoints() / RAFT_FILES[cfg.raft_variant]), "RAFT weights")],
    }
    for name in names:
        for path, what in wanted.get(name, []):
            if not path or not Path(path).exists():
                problems.append(f"{what}: '{Path(path).name}' not found at {path}")
    if "codes" in names or "t5" in names:
        try:
            check_musicgen_available(cfg.musicgen)
        except MissingWeightsError as err:
            problems.append(str(err))
    if problems:
        raise MissingWeightsError("missing weights (see README, 'Real weights'):\n  " + "\n  ".join(problems))


@dataclass
class VideoFeatures:
    """Visual features of one clip, plus masks and notes on what was substituted."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class Extractors:
    """Loaded, frozen models for the chosen extractors."""

    def __init__(self, cfg: ExtractorConfig, names: tuple[str, ...] = EXTRACTORS, rates: Rates = DEFAULT_RATES):
        unknown = set(names) - set(EXTRACTORS)
        if unknown:
            raise ValueError(f"unknown extractors {sorted(unknown)}; choose from {EXTRACTORS}")
        check_available(cfg, names)
        self.cfg, self.names, self.rates = cfg, tuple(names), rates
        self.marlin = load_marlin(cfg.marlin_path) if "marlin" in names else None
        self.synchformer = load_synchformer_visual(cfg.synchformer_path, cfg.synchformer) if "synchformer" in names else None
        self.raft = load_raft(cfg.raft_variant, cfg.raft_checkpoint) if "raft" in names else None
        self.musicgen = load_musicgen(cfg.musicgen, cfg.device) if {"codes", "t5"} & set(names) else None
        self._detector: FaceDetector | None = None

    # ---- video -----------------------------------------------------------------
    def video_features(self, clip: ClipFrames, duration_s: float,
                       face_box: tuple | FaceTrack | None = None) -> VideoFeatures:
        out = VideoFeatures(notes=list(clip.notes))
        if self.marlin is not None:
            self.face_features(clip, duration_s, face_box, out)
        if self.synchformer is not None:
            out.arrays["synchformer"] = self.synchformer_features(clip, duration_s)
        if self.raft is not None:
            idx = sample_indices(clip.times, self.rates.raft_video_fps, self.rates.raft_frames(duration_s))
            flow = compute_flow(self.raft, clip.frames[idx], self.cfg.flow)
            check_shape("raft", flow.shape[:1], (self.rates.raft_flows(duration_s),), duration_s)
            out.arrays["raft"] = flow
        return out

    def synchformer_features(self, clip: ClipFrames, duration_s: float) -> np.ndarray:
        r = self.rates
        idx = sample_indices(clip.times, r.synchformer_video_fps, r.synchformer_frames(duration_s))
        segments = preprocess_segments(clip.frames[idx], self.cfg.synchformer, r.synchformer_stride)
        with torch.no_grad():
            feats = torch.cat([self.synchformer(s[None]) for s in segments.split(8)], dim=1)[0]
        tokens = feats.reshape(-1, feats.shape[-1]).numpy()
        check_shape("synchformer", tokens.shape, (r.synchformer_tokens(duration_s), self.cfg.synchformer.dim), duration_s)
        return tokens

    def face_features(self, clip: ClipFrames, duration_s: float, face_box: tuple | FaceTrack | None,
                      out: VideoFeatures) -> None:
        """MARLIN features per 16-frame window at 80 fps; windows without a face are zero and masked."""
        r, enc = self.rates, self.marlin
        idx = sample_indices(clip.times, r.marlin_video_fps, r.marlin_frames(duration_s))
        times = np.arange(len(idx)) / r.marlin_video_fps
        boxes, valid = self.face_track(clip, times, face_box)
        n_win = r.marlin_windows(duration_s)
        feats = np.zeros((n_win, enc.dim), np.float32)
        mask = np.array([valid[w * r.marlin_stride : w * r.marlin_stride + r.marlin_window].all() for w in range(n_win)])
        h, w = clip.frames.shape[1:3]
        good = np.nonzero(mask)[0]
        for chunk in np.array_split(good, max(1, len(good) // 8)) if len(good) else []:
            starts = chunk * r.marlin_stride
            frame_ids = (starts[:, None] + np.arange(r.marlin_window)[None]).reshape(-1)
            crops = crop_faces(clip.frames[idx[frame_ids]], square_boxes(boxes[frame_ids], w, h), enc.input_size)
            windows = crops.reshape(len(chunk), r.marlin_window, 3, enc.input_size, enc.input_size).transpose(1, 2)
            feats[chunk] = enc(windows).numpy()
        out.arrays["marlin"] = feats
        out.arrays["marlin_mask"] = mask
        if not mask.any():
            out.notes.append("no face detected: MARLIN features are zero and fully masked")
        elif not mask.all():
            out.notes.append(f"face missing in {int((~mask).sum())}/{n_win} MARLIN windows (masked)")

    def face_track(self, clip: ClipFrames, times: np.ndarray,
                   face_box: tuple | FaceTrack | None) -> tuple[np.ndarray, np.ndarray]:
        """Face boxes (in decoded pixels) at ``times``: the manifest box, a track over the whole
        recording (a video read window by window), or smoothed MTCNN detections in this clip."""
        if isinstance(face_box, FaceTrack):
            return face_box.at(times)
        if face_box is not None:
            box = np.asarray(face_box, float) * clip.scale
            return np.repeat(box[None], len(times), 0), np.ones(len(times), bool)
        det_times, boxes = self.detect_faces(clip)
        return smooth_track(det_times, boxes, times)

    def detect_faces(self, clip: ClipFrames, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """MTCNN boxes at ``face_detect_fps`` from the clip start: ``n`` of them, or as many as its frames span."""
        if self._detector is None:
            self._detector = FaceDetector(self.cfg.device)
        fps = self.cfg.face_detect_fps
        n = self.rates.frames_at(float(clip.times[-1]) + 1e-3, fps) + 1 if n is None else n
        return np.arange(n) / fps, self._detector(clip.frames[sample_indices(clip.times, fps, n)])

    # ---- audio and text ----------------------------------------------------------
    def codes(self, audio: np.ndarray, duration_s: float) -> np.ndarray:
        codes = encode_audio(self.musicgen, audio)
        check_shape("codes", codes.shape[1:], (self.rates.codes_frames(duration_s),), duration_s)
        return codes

    def text(self, captions: list[str]) -> list[np.ndarray]:
        return text_hidden(self.musicgen, captions)
