"""The Live tab: the browser's webcam streams in, music that follows it streams out, with its latency.

The page sends webcam frames ``LIVE_FPS`` times a second (a Gradio stream event); they feed a
:class:`~expotion.app.pushed_camera.PushedCamera`, which a :class:`~expotion.live.session.LiveSession` plays into
the chosen model on its own thread, as ``expotion live --camera`` does. The session writes its growing wav and
latency log into a new folder under the app's ``--outputs``; the Start event streams the wav's new samples to the
page's player as they are written and shows the latest chunk's latency. Stop (or the webcam going quiet) ends the
session; what was made is kept.
"""
from __future__ import annotations

import io
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np
import soundfile as sf

from expotion.app.generate_tab import (PLAIN_MUSICGEN, USER_ERRORS, ModelPlace, checkpoint_choices, loaded_models,
                                       prompt_and_checkpoint, sampling_controls)
from expotion.app.pushed_camera import PushedCamera
from expotion.inference import Models, SamplingSettings
from expotion.live.camera import CameraError
from expotion.live.outputs import ChunkTiming
from expotion.live.session import DEFAULT_CHUNK_S, DEFAULT_MAX_DURATION_S, LiveSession, LiveSettings
from expotion.musicgen.windows import check_prompt

log = logging.getLogger("expotion.app")

LIVE_FPS = 10  # webcam frames a second the page sends and the session's video runs at
CAMERA_WAIT_S = 120.0  # how long Start waits for the first webcam frame
POLL_S = 0.1  # how often the Start event looks for new music in the wav
WAV_NAME, LOG_NAME = "live.wav", "live.latency.csv"


def model_note(models: Models) -> str:
    """One line on how closely this model can follow the camera."""
    conditioning = models.conditioning
    if conditioning is None:
        return "Plain MusicGen follows the prompt at the camera's pace, not the video."
    if conditioning.lookahead_s is None:
        return (f"This model is not live-capable (trained without the causal option): it hears whole "
                f"{conditioning.window_s:g} s windows of video, so each window's music starts only once that "
                f"window's video has arrived; expect about {conditioning.window_s:g} s of latency.")
    return (f"Live-capable: the music at each moment hears the video up to {conditioning.lookahead_s:g} s ahead "
            "of it.")


@dataclass
class LiveRun:
    """One page's running session: its camera, the session's thread, and what it has made so far."""

    camera: PushedCamera
    session: LiveSession
    folder: Path
    thread: threading.Thread | None = None
    latest: ChunkTiming | None = None
    error: str | None = None
    written_s: float = 0.0

    @property
    def wav(self) -> Path:
        return self.folder / WAV_NAME

    @property
    def log(self) -> Path:
        return self.folder / LOG_NAME

    def on_chunk(self, row: ChunkTiming) -> None:
        self.latest = row

    def start(self) -> None:
        self.session.on_chunk = self.on_chunk
        self.thread = threading.Thread(target=self._run, name="live session", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.written_s = self.session.run(self.wav, self.log).duration_s
        except (*USER_ERRORS, CameraError) as err:
            self.error = str(err)
        except Exception as err:  # the page gets one line; the server log keeps the traceback
            log.exception("live session failed")
            self.error = f"{type(err).__name__}: {err}"

    def stop(self) -> None:
        self.camera.stop()
        if self.thread is not None:
            self.thread.join()


class Webcams:
    """Each page's newest webcam frame (by Gradio's session hash) until Start, then the running session it feeds."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.frames: dict[str, np.ndarray] = {}
        self.runs: dict[str, LiveRun] = {}
        self.stop_asked: set[str] = set()

    def receive(self, key: str, image: np.ndarray) -> None:
        with self.lock:
            run = self.runs.get(key)
            if run is None:
                self.frames[key] = image
        if run is not None:
            run.camera.push(image)

    def first_frame(self, key: str) -> np.ndarray | None:
        with self.lock:
            return self.frames.pop(key, None)

    def ask_stop(self, key: str) -> LiveRun | None:
        with self.lock:
            self.stop_asked.add(key)
            return self.runs.get(key)

    def stopping(self, key: str) -> bool:
        with self.lock:
            return key in self.stop_asked

    def begin(self, key: str, run: LiveRun | None = None) -> None:
        with self.lock:
            self.stop_asked.discard(key)
            self.frames.pop(key, None)  # a frame from before Start may be long gone from the camera
            if run is not None:
                self.runs[key] = run

    def end(self, key: str) -> None:
        with self.lock:
            self.runs.pop(key, None)
            self.frames.pop(key, None)
            self.stop_asked.discard(key)


def wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, audio, sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def new_audio(wav: Path, sent: int) -> tuple[np.ndarray, int]:
    """The samples the growing wav has past the first ``sent`` (none before its first chunk), and its rate."""
    if not wav.is_file():
        return np.zeros(0, np.float32), 0
    info = sf.info(wav)
    if info.frames <= sent:
        return np.zeros(0, np.float32), info.samplerate
    audio, _ = sf.read(wav, start=sent, frames=info.frames - sent, dtype="float32")
    return audio, info.samplerate


def latency_value(run: LiveRun) -> float | None:
    return round(run.latest.latency_s, 2) if run.latest is not None else None


def build_live_tab(page: gr.Blocks, place: ModelPlace, output_root: Path) -> None:
    """Lay out the tab inside ``page`` and wire its events (``page.load`` lists checkpoints trained since start)."""
    choices = checkpoint_choices(place.runs_dir)
    webcams = Webcams()
    with gr.Row():
        with gr.Column():
            camera = gr.Image(label="Camera", sources=["webcam"], streaming=True, type="numpy", height=300,
                              elem_id="live-camera")
            prompt, checkpoint = prompt_and_checkpoint(choices, "live")
            with gr.Accordion("Settings", open=False):
                seed, cfg, top_k = sampling_controls()
                with gr.Row():
                    chunk = gr.Number(DEFAULT_CHUNK_S, label="Seconds of music per chunk", minimum=0.1)
                    longest = gr.Number(DEFAULT_MAX_DURATION_S, label="Longest session (s)", minimum=1)
            with gr.Row():
                start = gr.Button("Start", variant="primary", elem_id="live-start")
                stop = gr.Button("Stop", variant="stop", elem_id="live-stop")
        with gr.Column():
            music = gr.Audio(label="Music", streaming=True, autoplay=True, interactive=False, elem_id="live-music")
            latency = gr.Number(label="Latency (s): from the video a chunk needed reaching the server to its music "
                                      "being ready", precision=2, interactive=False, elem_id="live-latency")
            status = gr.Markdown("**Stopped.** Turn the camera on (allow the page to use it), write a prompt, "
                                 "choose a model and press Start.", elem_id="live-status")
            files = gr.File(label="Session files (music and latency log)", file_count="multiple",
                            interactive=False, elem_id="live-files")

    def on_frame(image: np.ndarray | None, request: gr.Request) -> None:
        if image is not None:
            webcams.receive(request.session_hash, image)

    def on_start(text: str, ckpt: str, seed_v: float, cfg_v: float, top_k_v: float, chunk_v: float,
                 longest_v: float, request: gr.Request) -> Iterator[tuple]:
        if shutil.which("ffmpeg") is None:  # Gradio encodes streamed audio with it
            raise gr.Error("The Live tab streams its music through ffmpeg, which is not on this server's PATH: "
                           "install it (e.g. apt-get install ffmpeg) and restart the app.", print_exception=False)
        key = request.session_hash
        webcams.begin(key)
        checkpoint_path = None if ckpt == PLAIN_MUSICGEN else Path(ckpt)
        prompt = text if text or checkpoint_path is None else None  # none given: the checkpoint's own
        try:
            if prompt is not None:
                check_prompt(prompt)
            settings = LiveSettings(chunk_s=float(chunk_v or DEFAULT_CHUNK_S),
                                    max_duration_s=float(longest_v or DEFAULT_MAX_DURATION_S))
            yield None, None, "**Loading the model…**", None
            models = loaded_models(place, checkpoint_path)
        except USER_ERRORS as err:
            webcams.end(key)
            raise gr.Error(str(err), print_exception=False) from None
        note = model_note(models)
        waiting = f"**Waiting for the camera:** allow the page to use it and press its Record button. {note}"
        yield None, None, waiting, None
        deadline, first = time.monotonic() + CAMERA_WAIT_S, None
        while first is None:
            if webcams.stopping(key) or time.monotonic() > deadline:
                webcams.end(key)
                yield None, None, "**Stopped** before the camera sent a frame.", None
                return
            time.sleep(POLL_S)
            first = webcams.first_frame(key)
        folder = Path(tempfile.mkdtemp(prefix=time.strftime("live-%Y%m%d-%H%M%S-"), dir=output_root))
        cam = PushedCamera(first, LIVE_FPS, models.extractor_cfg.max_short_side)
        sampling = SamplingSettings(int(seed_v or 0), float(cfg_v), int(top_k_v or 250))
        session = LiveSession(models, cam, prompt, sampling, settings)
        run = LiveRun(cam, session, folder)
        webcams.begin(key, run)
        run.start()
        yield None, None, f"**Camera on:** the music starts once the video it needs has arrived. {note}", None
        sent = 0
        try:
            while True:
                alive = run.thread.is_alive()
                audio, rate = new_audio(run.wav, sent)
                if len(audio):
                    sent += len(audio)
                    state = "Stopping:** finishing" if webcams.stopping(key) else "Playing:**"
                    yield (wav_bytes(audio, rate), latency_value(run),
                           f"**{state} {sent / rate:.1f} s of music. {note}", None)
                elif not alive:
                    break
                time.sleep(POLL_S)
        finally:
            run.stop()  # also when the page goes away mid-session: the files are closed and kept
            webcams.end(key)
        why = "the camera stopped sending frames; " if cam.went_idle else ""
        if run.error:
            why += f"{run.error}; "
        yield (None, latency_value(run),
               f"**Stopped:** {why}{run.written_s:.1f} s of music in `{folder}` ({WAV_NAME}, {LOG_NAME}).",
               [str(run.wav), str(run.log)])

    def on_stop(request: gr.Request) -> str:
        run = webcams.ask_stop(request.session_hash)
        if run is not None:
            run.camera.stop()  # the session ends as a file does; the Start event reports what it kept
        return "**Stopping:** finishing the music made so far…" if run else "**Stopped.**"

    def on_load() -> dict:
        return gr.update(choices=checkpoint_choices(place.runs_dir))

    page.load(on_load, None, checkpoint, api_name=False, concurrency_limit=8)
    camera.stream(on_frame, [camera], None, stream_every=1 / LIVE_FPS, api_name=False, concurrency_limit=4,
                  concurrency_id="live-frames", show_progress="hidden")
    start.click(on_start, [prompt, checkpoint, seed, cfg, top_k, chunk, longest], [music, latency, status, files],
                api_name="live", concurrency_limit=1, concurrency_id="live", show_progress="hidden")
    stop.click(on_stop, None, status, api_name=False, concurrency_limit=None, show_progress="hidden")
