"""The frozen feature extractors of §3.1 behind one interface, with shape checks.

Both the precompute stage and ``generate`` build an :class:`Extractors` and call
:meth:`Extractors.video_features` on decoded frames, so features seen at
training and at inference come from the same code. Every output length is
checked against :mod:`expotion.core.rates`.

Each video stream is one :class:`~expotion.extractors.streams.Stream`, registered here with its facts (its
weights, its loader ``(path, device, cfg)``, its computation, its rate, per-step shape, stored dtype and long-video
window). A new stream is one :func:`~expotion.extractors.streams.register_stream` call.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from expotion.core.rates import DEFAULT_RATES, Rates, StreamRate, check_shape, sample_indices
from expotion.core.tiny import PRECOMPUTE, tiny_path
from expotion.core.weights import REGISTRY, MissingWeightsError, torch_hub_checkpoints, weights_dir
from expotion.data.media import ClipFrames
from expotion.data.shards import StoredArray
from expotion.extractors.clip import ClipVision, check_clip_dir, find_clip, load_clip
from expotion.extractors.face import FACE_TRACKINGS, FaceDetector, FaceTrack, crop_faces, square_boxes, track_boxes
from expotion.extractors.farneback import FarnebackConfig, FarnebackFlow
from expotion.extractors.marlin import MARLIN_FILE, load_marlin
from expotion.extractors.motionformer import (CHECKPOINT_FILENAME, WEIGHTS_SUBDIR, MotionFormerConfig,
                                              load_synchformer_visual, preprocess_segments)
from expotion.extractors.raft import RAFT_FILES, FlowConfig, compute_flow, load_raft
from expotion.extractors.stepwise import clip_steps, farneback_steps, marlin_steps, raft_steps, synchformer_steps
from expotion.extractors.streams import STREAMS, Stream, register_stream, stored_arrays
from expotion.extractors.streams import rates_matching  # noqa: F401  (re-exported, with the built-in streams registered)
from expotion.musicgen.loading import MusicGenModule, check_musicgen_available, encode_audio, load_musicgen, text_hidden


@dataclass(frozen=True)
class ExtractorConfig:
    """Which weights each extractor loads, the sizes it runs at, the device it runs on, and the profile that chose them."""

    profile: str = "real"
    weights_dir: str = ""
    musicgen: str = "facebook/musicgen-small"
    marlin_path: str = ""
    synchformer_path: str = ""
    synchformer: MotionFormerConfig = MotionFormerConfig()
    raft_variant: str = "large"
    raft_checkpoint: str | None = None
    flow: FlowConfig = FlowConfig()
    clip_path: str = ""  # a CLIP ViT-B/32 directory in the Hugging Face format
    farneback: FarnebackConfig = FarnebackConfig()
    max_short_side: int = 512
    face_detect_fps: float = 5.0
    face_tracking: str = "smooth"  # "causal" for features that can also be computed as frames arrive (live)
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.face_tracking not in FACE_TRACKINGS:
            raise ValueError(f"face_tracking must be one of {FACE_TRACKINGS}, got {self.face_tracking!r}")

    def describe(self) -> dict:
        """What a cache records about the models that produced it (not where they ran); the face tracking only
        when it is not the default, so caches written before the option existed stay valid."""
        doc = json.loads(json.dumps(asdict(self), default=str))
        doc.pop("device")
        if self.face_tracking == "smooth":
            doc.pop("face_tracking")
        return doc


def real_profile(wdir: str | Path | None = None, **overrides) -> ExtractorConfig:
    """Released weights at their documented locations (see the README's weights table)."""
    root = weights_dir(wdir)
    return replace(
        ExtractorConfig(
            weights_dir=str(root),
            marlin_path=str(root / MARLIN_FILE),
            synchformer_path=str(root / WEIGHTS_SUBDIR / CHECKPOINT_FILENAME),
            clip_path=str(find_clip(root) or ""),
        ),
        **overrides,
    )


def tiny_profile(root: str | Path, **overrides) -> ExtractorConfig:
    """Small random models of the same classes, as ``expotion weights make-tiny ROOT`` writes them."""
    missing = [str(tiny_path(root, key)) for key in PRECOMPUTE if not tiny_path(root, key).exists()]
    if missing:
        raise MissingWeightsError(f"tiny profile: {', '.join(missing)} not found; write the tiny stand-ins once "
                                  f"with `expotion weights make-tiny {root}`")
    return replace(
        ExtractorConfig(
            profile="tiny",
            weights_dir=str(root),
            musicgen=str(tiny_path(root, "musicgen")),
            marlin_path=str(tiny_path(root, "marlin")),
            synchformer_path=str(tiny_path(root, "synchformer")),
            synchformer=MotionFormerConfig.tiny(),
            raft_variant="small",
            raft_checkpoint=str(tiny_path(root, "raft_small")),
            flow=FlowConfig(height=128, width=128, updates=6, pool=8),
            clip_path=str(tiny_path(root, "clip")),
            max_short_side=256,
        ),
        **overrides,
    )


def profile_config(profile: str, weights_dir: str | Path | None, tiny_dir: str | Path, device: str,
                   **overrides) -> ExtractorConfig:
    """The extractors a profile names, on ``device``: the tiny stand-ins in ``tiny_dir`` or the released weights."""
    if profile == "tiny":
        return tiny_profile(tiny_dir, device=device, **overrides)
    return real_profile(weights_dir, device=device, **overrides)


@dataclass
class VideoFeatures:
    """Visual features of one clip, plus masks and notes on what was substituted."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def face_features(ex: Extractors, enc: nn.Module, clip: ClipFrames, duration_s: float,
                  face_box: tuple | FaceTrack | None, out: VideoFeatures) -> None:
    """MARLIN features per 16-frame window at 80 fps; windows without a face are zero and masked."""
    r = ex.rates
    idx = sample_indices(clip.times, r.marlin_video_fps, r.marlin_frames(duration_s))
    times = np.arange(len(idx)) / r.marlin_video_fps
    boxes, valid = ex.face_track(clip, times, face_box)
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
        feats[chunk] = enc(windows.to(ex.device)).cpu().numpy()
    out.arrays["marlin"] = feats
    out.arrays["marlin_mask"] = mask
    if not mask.any():
        out.notes.append("no face detected: MARLIN features are zero and fully masked")
    elif not mask.all():
        out.notes.append(f"face missing in {int((~mask).sum())}/{n_win} MARLIN windows (masked)")


def synchformer_features(ex: Extractors, model: nn.Module, clip: ClipFrames, duration_s: float,
                         face_box: tuple | None, out: VideoFeatures) -> None:
    """Synchformer tokens: 16-frame segments at 25 fps, 8 vectors each, flattened in time."""
    r, cfg = ex.rates, ex.cfg.synchformer
    idx = sample_indices(clip.times, r.synchformer_video_fps, r.synchformer_frames(duration_s))
    segments = preprocess_segments(clip.frames[idx], cfg, r.synchformer_stride)
    with torch.no_grad():
        feats = torch.cat([model(s[None].to(ex.device)) for s in segments.split(8)], dim=1)[0]
    tokens = feats.reshape(-1, feats.shape[-1]).cpu().numpy()
    check_shape("synchformer", tokens.shape, (r.synchformer_tokens(duration_s), cfg.dim), duration_s)
    out.arrays["synchformer"] = tokens


def raft_features(ex: Extractors, model: nn.Module, clip: ClipFrames, duration_s: float, face_box: tuple | None,
                  out: VideoFeatures) -> None:
    """RAFT flow between frames sampled at 5 fps, pooled for storage."""
    idx = sample_indices(clip.times, ex.rates.raft_video_fps, ex.rates.raft_frames(duration_s))
    flow = compute_flow(model, clip.frames[idx], ex.cfg.flow)
    check_shape("raft", flow.shape[:1], (ex.rates.raft_flows(duration_s),), duration_s)
    out.arrays["raft"] = flow


def raft_path(cfg: ExtractorConfig) -> str:
    return cfg.raft_checkpoint or str(torch_hub_checkpoints() / RAFT_FILES[cfg.raft_variant])


def synchformer_matching(rates: Rates, stored: StreamRate) -> Rates:
    """The rates with the segment stride that stored Synchformer tokens were written with."""
    if not stored.segment_len:
        return rates
    return replace(rates, synchformer_stride=int(round(stored.segment_hop * rates.synchformer_video_fps)))


def synchformer_last_frame(rates: Rates, index: np.ndarray) -> np.ndarray:
    """Every token of a segment reads all its frames (space-time attention), so it is ready with the segment's last."""
    segment = index // rates.synchformer_tokens_per_segment
    return (segment * rates.synchformer_stride + rates.synchformer_segment - 1) / rates.synchformer_video_fps


# Expotion's streams (§3.1), extracted by default.
register_stream(Stream(
    "marlin", weight_key=lambda cfg: "marlin", path=lambda cfg: cfg.marlin_path,
    load=lambda path, device, cfg: load_marlin(path, device),
    rate=lambda r: r.marlin, shape=lambda enc, cfg: (enc.dim,), compute=face_features, default=True, faces=True,
    overlap=lambda r: (r.marlin_window - r.marlin_stride) / r.marlin_video_fps,
    last_frame=lambda r, i: (i * r.marlin_stride + r.marlin_window - 1) / r.marlin_video_fps, stepwise=marlin_steps))
register_stream(Stream(
    "synchformer", weight_key=lambda cfg: "synchformer", path=lambda cfg: cfg.synchformer_path,
    load=lambda path, device, cfg: load_synchformer_visual(path, cfg.synchformer, device=device),
    rate=lambda r: r.synchformer, shape=lambda model, cfg: (cfg.synchformer.dim,), compute=synchformer_features,
    default=True, overlap=lambda r: (r.synchformer_segment - r.synchformer_stride) / r.synchformer_video_fps,
    matching=synchformer_matching, last_frame=synchformer_last_frame, stepwise=synchformer_steps))
register_stream(Stream(
    "raft", weight_key=lambda cfg: f"raft_{cfg.raft_variant}", path=raft_path,
    load=lambda path, device, cfg: load_raft(cfg.raft_variant, cfg.raft_checkpoint, device),
    rate=lambda r: r.raft, shape=lambda model, cfg: cfg.flow.stored_shape, compute=raft_features, default=True,
    pairwise=True, last_frame=lambda r, i: (i + 1) / r.raft_video_fps, stepwise=raft_steps))


def clip_features(ex: Extractors, model: ClipVision, clip: ClipFrames, duration_s: float, face_box: tuple | None,
                  out: VideoFeatures) -> None:
    """CLIP's last hidden state of frames sampled at 2 fps: (frames, 1 + patches, width), CLS first."""
    r = ex.rates
    idx = sample_indices(clip.times, r.clip_video_fps, r.clip_frames(duration_s))
    tokens = model(clip.frames[idx]).cpu().numpy()
    check_shape("clip", tokens.shape, (r.clip_frames(duration_s), model.tokens, model.dim), duration_s)
    out.arrays["clip"] = tokens


def farneback_features(ex: Extractors, model: FarnebackFlow, clip: ClipFrames, duration_s: float,
                       face_box: tuple | None, out: VideoFeatures) -> None:
    """Farneback flow magnitude between consecutive frames sampled at 4 fps: (frames - 1, height, width)."""
    r = ex.rates
    idx = sample_indices(clip.times, r.farneback_video_fps, r.farneback_frames(duration_s))
    maps = model(clip.frames[idx])
    check_shape("farneback", maps.shape, (r.farneback_flows(duration_s), *model.cfg.stored_shape), duration_s)
    out.arrays["farneback"] = maps


# The second method's streams (video-to-music-clip-flow §3.1, §3.2).
register_stream(Stream(
    "clip", weight_key=lambda cfg: "clip", path=lambda cfg: cfg.clip_path, check=check_clip_dir,
    load=lambda path, device, cfg: load_clip(path, device),
    rate=lambda r: r.clip, shape=lambda model, cfg: (model.tokens, model.dim), compute=clip_features,
    last_frame=lambda r, i: i / r.clip_video_fps, stepwise=clip_steps))
register_stream(Stream(
    "farneback", load=lambda path, device, cfg: FarnebackFlow(cfg.farneback),
    rate=lambda r: r.farneback, shape=lambda model, cfg: cfg.farneback.stored_shape, compute=farneback_features,
    pairwise=True, last_frame=lambda r, i: (i + 1) / r.farneback_video_fps, stepwise=farneback_steps))

VISUAL = tuple(STREAMS)  # the built-in video streams
AUDIO_TEXT = ("codes", "t5")  # EnCodec tokens and text states, both from the MusicGen being adapted
EXTRACTORS = (*VISUAL, *AUDIO_TEXT)


def extractor_names() -> tuple[str, ...]:
    """Every registered video stream (a plug-in's too), then the audio and text extractors."""
    return (*STREAMS, *AUDIO_TEXT)


def default_extractors() -> tuple[str, ...]:
    """What precompute extracts unless told otherwise: the streams registered as default, audio and text."""
    return (*(name for name, stream in STREAMS.items() if stream.default), *AUDIO_TEXT)


def stored_layout(names: tuple[str, ...], rates: Rates) -> dict[str, StoredArray]:
    """How the shards store what extractors ``names`` compute: each stream's dtype and rate, the tokens' frame rate."""
    codes = {"codes": StoredArray(None, {"frame_rate": rates.codes_fps})} if "codes" in names else {}
    return {**stored_arrays(names, rates), **codes}


def check_names(names: tuple[str, ...]) -> None:
    """Refuse extractor names that are not streams of this project (a typo in ``--extractors``)."""
    unknown = set(names) - set(extractor_names())
    if unknown:
        raise ValueError(f"unknown extractors {sorted(unknown)}; choose from {extractor_names()}")


def check_available(cfg: ExtractorConfig, names: tuple[str, ...]) -> None:
    """Raise one error listing every missing weight file, before any work starts."""
    problems = []
    for stream in (STREAMS[n] for n in names if n in STREAMS and STREAMS[n].weight_key is not None):
        path = stream.path(cfg)
        if not path or not Path(path).exists():
            spec = REGISTRY[stream.weight_key(cfg)]
            problems.append(f"{stream.name}: '{Path(path).name or spec.filename}' not found at {path or '(no path)'}"
                            f" (it goes in {spec.where})")
        elif stream.check is not None:
            try:
                stream.check(path)
            except MissingWeightsError as err:
                problems.append(f"{stream.name}: {err}")
    if set(AUDIO_TEXT) & set(names):
        try:
            check_musicgen_available(cfg.musicgen)
        except MissingWeightsError as err:
            problems.append(str(err))
    if problems:
        raise MissingWeightsError("missing weights (see README, 'Real weights'):\n  " + "\n  ".join(problems))


class Extractors(nn.Module):
    """The frozen models of the chosen extractors, as one module: ``.to(device)`` moves every one of them."""

    def __init__(self, cfg: ExtractorConfig, names: tuple[str, ...] | None = None, rates: Rates = DEFAULT_RATES,
                 device: str | torch.device | None = None):
        super().__init__()
        names = extractor_names() if names is None else names
        check_names(names)
        check_available(cfg, names)
        device = torch.device(device if device is not None else cfg.device)
        self.cfg, self.names, self.rates = cfg, tuple(names), rates
        self.streams = [STREAMS[n] for n in STREAMS if n in names]
        self.models = nn.ModuleDict({s.name: s.load(s.path(cfg), device, cfg) for s in self.streams})
        if set(AUDIO_TEXT) & set(names):
            self.models["musicgen"] = MusicGenModule(load_musicgen(cfg.musicgen, device))
        self.register_buffer("anchor", torch.empty(0, device=device), persistent=False)  # the device, with no model
        self._detector: tuple[torch.device, FaceDetector] | None = None

    @property
    def device(self) -> torch.device:
        return self.anchor.device

    @property
    def musicgen(self):
        """The audiocraft MusicGen behind ``codes`` and ``t5`` (None when neither is extracted)."""
        return self.models["musicgen"].musicgen if "musicgen" in self.models else None

    def held_models(self) -> dict[str, nn.Module]:
        """Every model in use by name, the face detector included once it has run."""
        detector = {"face_detector": self._detector[1].mtcnn} if self._detector is not None else {}
        return {**self.models, **detector}

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-time-step shape of each visual stream."""
        return {s.name: s.shape(self.models[s.name], self.cfg) for s in self.streams}

    # ---- video -----------------------------------------------------------------
    def video_features(self, clip: ClipFrames, duration_s: float,
                       face_box: tuple | FaceTrack | None = None) -> VideoFeatures:
        out = VideoFeatures(notes=list(clip.notes))
        for stream in self.streams:
            stream.compute(self, self.models[stream.name], clip, duration_s, face_box, out)
        return out

    def face_track(self, clip: ClipFrames, times: np.ndarray,
                   face_box: tuple | FaceTrack | None) -> tuple[np.ndarray, np.ndarray]:
        """Face boxes (in decoded pixels) at ``times``: the manifest box, a track over the whole
        recording (a video read window by window), or MTCNN detections in this clip tracked as
        ``cfg.face_tracking`` says."""
        if isinstance(face_box, FaceTrack):
            return face_box.at(times)
        if face_box is not None:
            box = np.asarray(face_box, float) * clip.scale
            return np.repeat(box[None], len(times), 0), np.ones(len(times), bool)
        det_times, boxes = self.detect_faces(clip)
        return track_boxes(det_times, boxes, times, self.cfg.face_tracking)

    def face_detector(self) -> FaceDetector:
        """MTCNN on the extractors' current device (made again after a ``.to``)."""
        if self._detector is None or self._detector[0] != self.device:
            self._detector = (self.device, FaceDetector(str(self.device)))
        return self._detector[1]

    def detect_faces(self, clip: ClipFrames, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """MTCNN boxes at ``face_detect_fps`` from the clip start: ``n`` of them, or as many as its frames span."""
        fps = self.cfg.face_detect_fps
        n = self.rates.frames_at(float(clip.times[-1]) + 1e-3, fps) + 1 if n is None else n
        return np.arange(n) / fps, self.face_detector()(clip.frames[sample_indices(clip.times, fps, n)])

    # ---- audio and text ----------------------------------------------------------
    def codes(self, audio: np.ndarray, duration_s: float) -> np.ndarray:
        codes = encode_audio(self.musicgen, audio)
        check_shape("codes", codes.shape[1:], (self.rates.codes_frames(duration_s),), duration_s)
        return codes

    def text(self, captions: list[str]) -> list[np.ndarray]:
        return text_hidden(self.musicgen, captions)
