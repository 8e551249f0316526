"""A live session: music generated while the video arrives, written chunk by chunk, each chunk's latency logged.

Generation is offline generation itself (:func:`expotion.musicgen.windows.generate_tokens`) with
:class:`LiveSession` as its step hooks, so with the same seed and the same video the tokens are offline's. Before a
step samples, the session waits for the video the step may read: up to the step's time plus the model's
``lookahead_s`` (its conditioning is rebuilt as features arrive), or, for a model conditioned on whole windows
(``lookahead_s`` None, every model trained without the causal option), up to the end of the step's window; a
model without video waits for the step's own time, so the music keeps the camera's pace. As codes become final,
EnCodec decodes them a chunk at a time into a wav that grows as the session runs.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from expotion.extractors.incremental import IncrementalFeatures
from expotion.inference.models import Models, SamplingSettings
from expotion.live.camera import Camera
from expotion.live.outputs import ChunkTiming, GrowingWav, LatencyLog
from expotion.live.reextracted_features import ReextractedFeatures
from expotion.musicgen.streaming import ChunkedDecoder, Conditioner, FinalFrames
from expotion.musicgen.windows import DECODE_CONTEXT, GenerationError, features_for, generate_tokens, model_prompt

log = logging.getLogger(__name__)

DEFAULT_CHUNK_S = 0.5
DECODE_LOOKAHEAD = 6  # frames of codes past a chunk that its decode reads (EnCodec's reach; see docs/live.md)
DEFAULT_MAX_DURATION_S = 600.0  # a camera session's length when none is given


def feature_source(models: Models, fps: float, size: tuple[int, int],
                   scale: float) -> IncrementalFeatures | ReextractedFeatures:
    """The model's features as frames arrive: computed incrementally, at a bounded cost per frame, unless the model
    was trained on faces tracked over the whole clip (``--face-tracking smooth``, the default). Those features only
    re-extraction reproduces; it is exact, but its cost grows with the session, so it is logged."""
    extractors = models.extractors()
    if any(s.faces for s in extractors.streams) and extractors.cfg.face_tracking != "causal":
        log.warning("this model's face features were tracked over whole clips (--face-tracking smooth): live "
                    "re-extracts the video so far at every update, which slows as the session grows; train on "
                    "features made with --face-tracking causal for constant-cost live features")
        return ReextractedFeatures(extractors, models.streams, fps, size, scale=scale)
    return IncrementalFeatures(extractors, models.streams, fps, size, scale=scale)


class SessionEnded(Exception):
    """The video ended before the music: the session keeps what is final."""


@dataclass(frozen=True)
class LiveSettings:
    chunk_s: float = DEFAULT_CHUNK_S  # audio per chunk
    decode_left: int = DECODE_CONTEXT  # frames of codes before a chunk that its decode reads
    decode_right: int = DECODE_LOOKAHEAD
    max_duration_s: float = DEFAULT_MAX_DURATION_S  # a camera's session (a file plays to its end)

    def __post_init__(self) -> None:
        if not self.chunk_s > 0 or not self.max_duration_s > 0:
            raise GenerationError(f"chunk {self.chunk_s:g} s and duration {self.max_duration_s:g} s must be positive")


@dataclass
class LiveResult:
    wav: Path
    log: Path
    duration_s: float  # music written
    codes: torch.Tensor  # (1, K, frames) the final codes, as streamed
    tokens: torch.Tensor | None  # what generation returned (None when the video ended first)
    chunks: list[ChunkTiming] = field(default_factory=list)
    lookahead_s: float | None = None
    wall_s: float = 0.0
    stopped: bool = False  # the video ended (or the user stopped) before the planned duration


class LiveSession:
    """Play ``camera`` into ``models``: call :meth:`run`. Implements :class:`expotion.musicgen.streaming.StepHooks`."""

    def __init__(self, models: Models, camera: Camera, prompt: str | None,
                 sampling: SamplingSettings = SamplingSettings(), settings: LiveSettings = LiveSettings(),
                 on_chunk: Callable[[ChunkTiming], None] | None = None):
        if prompt is None and models.spec is not None:
            prompt = models.spec.prompt
        self.prompt = model_prompt(models.conditioning, prompt)
        self.models, self.camera, self.sampling, self.settings = models, camera, sampling, settings
        self.on_chunk = on_chunk
        self.musicgen = models.musicgen
        self.frame_rate = self.musicgen.frame_rate
        info = camera.info
        self.duration_s = info.duration_s if info.duration_s is not None else settings.max_duration_s
        self.conditioning = models.conditioning
        self.lookahead_s = self.conditioning.lookahead_s if self.conditioning is not None else 0.0
        self.features = None
        if self.conditioning is not None:
            self.features = feature_source(models, info.fps, info.size, info.scale)
        self.frame_times: list[float] = []
        self.arrivals: list[float] = []
        self.ended = False
        self.parts = dict.fromkeys(("waiting_s", "features_s", "steps_s", "audio_decode_s"), 0.0)

    # ---- the video --------------------------------------------------------------------------
    def covered_s(self) -> float:
        return self.frame_times[-1] + 1 / self.camera.info.fps if self.frame_times else 0.0

    def receive(self) -> bool:
        """Take the next frame into the features (waiting for it); False once the video has ended."""
        if self.ended:
            return False
        start = time.perf_counter()
        frame = self.camera.next_frame(block=True)
        got = time.perf_counter()
        self.parts["waiting_s"] += got - start
        if frame is None:
            self.ended = True
            if self.features is not None:
                self.features.finish()
        else:
            self.frame_times.append(frame.time_s)
            self.arrivals.append(frame.arrived - self.t0)
            if self.features is not None:
                self.features.push(frame.image)
        self.parts["features_s"] += time.perf_counter() - got
        return not self.ended

    def wait_video(self, until_s: float) -> None:
        """Receive frames until they show the video up to ``until_s`` (or the video ends short of it)."""
        while self.covered_s() < until_s - 1e-6 and self.receive():
            pass

    def check_within_video(self, time_s: float) -> None:
        """End the session when music at ``time_s`` would outlast the video (a camera that stopped); a file's music
        lasts as long as the file says, as offline generation's does, even where its last frame ends a little earlier."""
        shown = max(self.covered_s() + 1 / self.camera.info.fps, self.camera.info.duration_s or 0.0)
        if self.ended and time_s > shown + 1e-6:
            raise SessionEnded(f"the video ended at {self.covered_s():.2f} s")

    def arrival_of(self, video_s: float) -> float:
        """Wall time the frame showing video time ``video_s`` arrived (the last frame, past the video's end)."""
        period = 1 / self.camera.info.fps
        i = int(np.searchsorted(np.asarray(self.frame_times) + period, video_s - 1e-6, side="left"))
        return self.arrivals[min(i, len(self.arrivals) - 1)]

    # ---- features ---------------------------------------------------------------------------
    def current_features(self) -> dict[str, torch.Tensor]:
        start = time.perf_counter()
        feats = {name: t[None] for name, t in self.features.features().items()}
        self.parts["features_s"] += time.perf_counter() - start
        return features_for(self.conditioning, feats)

    def needed_counts(self, end_s: float) -> dict[str, int]:
        """Vectors of each stream a window ending at ``end_s`` reads: all centred before ``end_s`` and the next
        instant (Eq. 1 interpolates towards it), the segments that overlap them included."""
        counts = {}
        for name, rate in self.models.rates.items():
            bound = end_s + 1 / rate.fps
            n = int(math.ceil((bound + 1) * rate.vectors_per_second)) + 2 * max(rate.segment_len, 1)
            before = np.nonzero(rate.times(n) < bound - 1e-6)[0]
            counts[name] = int(before.max()) + 1 if len(before) else 0
        return counts

    def wait_features(self, end_s: float | None, until_s: float | None) -> None:
        """Receive frames until the features a window ending at ``end_s`` reads are out, or (``until_s``) every
        feature the video up to ``until_s`` allows."""
        while not self.ended:
            if until_s is not None and self.features.complete_until_s() >= until_s - 1e-6:
                return
            if end_s is not None:
                need, have = self.needed_counts(end_s), self.current_features()
                if all(name in have and have[name].shape[1] >= n for name, n in need.items()):
                    return
            self.receive()

    # ---- step hooks -------------------------------------------------------------------------
    @contextlib.contextmanager
    def window(self, index: int, offset: int, prompt: int, length: int, pattern,
               condition: Conditioner) -> Iterator[None]:
        self.offset, self.pattern, self.condition = offset, pattern, condition
        self.final.start_window(offset, prompt, pattern)
        self.window_end_s = (offset + length) / self.frame_rate
        self.conditioned = contextlib.ExitStack()
        self.feature_counts = None
        try:
            if self.conditioning is not None and self.lookahead_s is None:
                self.wait_video(self.window_end_s)
                self.check_within_video(self.window_end_s)
                self.wait_features(self.window_end_s, None)
                self.recondition()
            yield
        finally:
            self.conditioned.close()

    def recondition(self) -> None:
        """Condition the window on the features out so far (again, when more have come out since)."""
        feats = self.current_features()
        counts = {name: t.shape[1] for name, t in feats.items()}
        if counts == self.feature_counts:
            return
        start = time.perf_counter()
        self.conditioned.close()
        self.conditioned = contextlib.ExitStack()
        self.conditioned.enter_context(self.condition(feats))
        self.feature_counts = counts
        self.parts["steps_s"] += time.perf_counter() - start

    def before_step(self, step: int) -> None:
        frames = [coord.t for coord in self.pattern.layout[step]]
        # the pattern's last steps may name frames past the music planned (audiocraft cuts them): none needs video
        step_s = min(self.offset + max(frames) if frames else self.offset, self.total) / self.frame_rate
        if self.conditioning is not None and self.lookahead_s is None:
            need = self.window_end_s
        else:
            need = step_s + (self.lookahead_s or 0.0)
        self.wait_video(need)
        self.check_within_video(step_s)
        if self.conditioning is not None and self.lookahead_s is not None:
            self.wait_features(None, need)
            self.recondition()
        self.step_need, self.step_start = need, time.perf_counter()

    def after_step(self, step: int, tokens: torch.Tensor) -> None:
        self.parts["steps_s"] += time.perf_counter() - self.step_start
        before = self.final.final
        if self.final.add(step, tokens):
            self.frame_need[before : self.final.final] = self.step_need
        self.decode_ready(self.total)

    # ---- audio ------------------------------------------------------------------------------
    def decode_ready(self, total: int) -> None:
        while self.decoder.ready(self.final.final, total):
            start = time.perf_counter()
            a, b, audio = self.decoder.next_chunk(self.final.codes[..., :total])
            audio = audio[0, : max(0, self.samples_left)]
            self.wav.append(audio)
            self.samples_left -= len(audio)
            ready = time.perf_counter()
            self.parts["audio_decode_s"] += ready - start
            needed = float(self.frame_need[min(b + self.decoder.right, total) - 1])
            arrival = self.arrival_of(needed)
            row = ChunkTiming(len(self.chunks), a / self.frame_rate, b / self.frame_rate, needed, arrival,
                              ready - self.t0, ready - self.t0 - arrival, **self.parts)
            self.parts = dict.fromkeys(self.parts, 0.0)
            self.chunks.append(row)
            self.log.write(row)
            if self.on_chunk:
                self.on_chunk(row)

    def run(self, wav_path: Path, log_path: Path) -> LiveResult:
        """Play the camera to its end (a camera: until it stops, ``max_duration_s`` or Ctrl-C)."""
        lm = self.musicgen.lm
        self.total = int(self.duration_s * self.frame_rate)
        self.final = FinalFrames(1, lm.num_codebooks, self.total)
        self.frame_need = np.zeros(self.total)
        chunk = max(1, int(round(self.settings.chunk_s * self.frame_rate)))
        self.decoder = ChunkedDecoder(self.musicgen.compression_model, self.frame_rate, self.musicgen.sample_rate,
                                      chunk, self.settings.decode_left, self.settings.decode_right)
        self.samples_left = int(round(self.duration_s * self.musicgen.sample_rate))
        self.chunks: list[ChunkTiming] = []
        self.wav, self.log = GrowingWav(wav_path, self.musicgen.sample_rate), LatencyLog(log_path)
        if self.conditioning is not None and self.lookahead_s is None:
            log.info("this model is conditioned on whole windows of video (not trained causal): each window's "
                     "music starts once its %g s of video have arrived", self.conditioning.window_s)
        tokens, stopped = None, False
        self.t0 = time.perf_counter()
        self.camera.start()
        try:
            tokens = generate_tokens(self.musicgen, [self.prompt], self.duration_s, self.conditioning, None,
                                     self.models.rates, **asdict(self.sampling), hooks=self)
            self.decode_ready(self.total)
        except (SessionEnded, KeyboardInterrupt) as why:
            stopped = True
            log.info("session stopped: %s", why or "interrupted")
            final = self.final.final
            self.samples_left = min(self.samples_left, final * self.decoder.hop - self.decoder.done * self.decoder.hop)
            self.decode_ready(final)
        finally:
            self.camera.stop()
            if not stopped and self.samples_left > 0:  # as offline decoding ends: silence up to the duration
                self.wav.append(np.zeros(self.samples_left, np.float32))
            self.wav.close()
            self.log.close()
        written = self.wav.samples / self.musicgen.sample_rate
        return LiveResult(Path(wav_path), Path(log_path), written, self.final.codes[..., : self.final.final],
                          tokens.cpu() if tokens is not None else None, self.chunks, self.lookahead_s,
                          time.perf_counter() - self.t0, stopped)
