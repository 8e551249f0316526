"""Streaming pieces of live generation: chunked EnCodec decoding against one whole decode (the error measured
against the overlap), codes final as the delay pattern says, and waits that follow a model's lookahead."""
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from expotion.live.session import DECODE_LOOKAHEAD
from expotion.musicgen.loading import load_musicgen
from expotion.musicgen.streaming import ChunkedDecoder, FinalFrames
from expotion.musicgen.windows import DECODE_CONTEXT, generate_tokens


@pytest.fixture(scope="module")
def musicgen(tiny_profile_cfg):
    return load_musicgen(tiny_profile_cfg.musicgen)


def chunked_error(musicgen, codes: torch.Tensor, left: int, right: int, chunk: int = 25) -> float:
    whole = musicgen.compression_model.decode(codes, None)[:, 0].numpy()
    decoder = ChunkedDecoder(musicgen.compression_model, musicgen.frame_rate, musicgen.sample_rate, chunk, left, right)
    parts = []
    while decoder.done < codes.shape[-1]:
        parts.append(decoder.next_chunk(codes)[2])
    joined = np.concatenate(parts, axis=1)
    assert joined.shape == whole.shape
    return float(np.abs(joined - whole).max())


@torch.no_grad()
def test_chunked_decoding_equals_one_decode_once_the_overlap_covers_encodecs_reach(musicgen):
    """EnCodec's decoder is convolutional: a sample reads a few frames of codes on either side. Chunks decoded
    with less overlap than that reach are wrong at their joins (errors of the order of the signal); with at least
    the reach they equal one decode up to float rounding (1e-6 of a signal of about 0.1 here). The tiny model's
    reach is measured; the session's defaults must cover it."""
    codes = torch.randint(0, musicgen.lm.card, (1, musicgen.lm.num_codebooks, 300),
                          generator=torch.Generator().manual_seed(0))
    peak = float(musicgen.compression_model.decode(codes, None).abs().max())
    errors = {(left, right): chunked_error(musicgen, codes, left, right) for left in (0, 2, 8) for right in (0, 2, 8)}
    assert errors[(0, 0)] > 0.05 * peak  # no overlap: the joins are audibly wrong
    assert errors[(8, 8)] < 1e-5 * peak  # overlap beyond the reach: float rounding
    reach = next(r for r in range(1, 9) if chunked_error(musicgen, codes, r, r) < 1e-5 * peak)
    assert reach <= min(DECODE_CONTEXT, DECODE_LOOKAHEAD)
    assert chunked_error(musicgen, codes, DECODE_CONTEXT, DECODE_LOOKAHEAD) < 1e-5 * peak


class Recorder:
    """Step hooks that only watch: which frames are final after each step."""

    def __init__(self, total: int, codebooks: int):
        self.final = FinalFrames(1, codebooks, total)
        self.after: list[tuple[int, int, int]] = []  # (window offset, step, final frames)

    def window(self, index, offset, prompt, length, pattern, condition):
        self.offset = offset
        self.final.start_window(offset, prompt, pattern)
        return condition(None)

    def before_step(self, step):
        pass

    def after_step(self, step, tokens):
        self.final.add(step, tokens)
        self.after.append((self.offset, step, self.final.final))


def test_codes_are_final_as_the_delay_pattern_says_and_equal_generations_tokens(musicgen):
    """Codebook q of frame f is sampled at step f + q + 1 of its window, so frame f is final after step f + K."""
    k = musicgen.lm.num_codebooks
    recorder = Recorder(250, k)
    kept, musicgen.max_duration = musicgen.max_duration, 2.0  # 2 s windows, 1 s apart: four windows for 5 s
    try:
        tokens = generate_tokens(musicgen, ["calm piano"], 5.0, seed=3, top_k=50, extend_stride=1.0, hooks=recorder)
    finally:
        musicgen.max_duration = kept
    assert {offset for offset, _, _ in recorder.after} == {0, 50, 100, 150}
    assert torch.equal(recorder.final.codes, tokens)
    first_window = [(step, final) for offset, step, final in recorder.after if offset == 0]
    assert all(final == max(0, step - k + 1) for step, final in first_window[: 100])
    assert recorder.final.final == tokens.shape[-1]


class LookingAhead:
    """A trained conditioning that claims to read ``lookahead_s`` of video past each step (the causal option's
    contract), so the session waits per step instead of per window."""

    def __init__(self, inner, lookahead_s: float):
        self.inner, self.lookahead_s = inner, lookahead_s

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_each_step_waits_for_its_time_plus_the_lookahead(tmp_path, tiny_profile_cfg, demo_cache):
    from expotion.inference import ModelSettings, SamplingSettings, load_models
    from expotion.live.camera import FileCamera
    from expotion.live.session import LiveSession, LiveSettings
    from conftest import moving_frames, write_video

    from expotion.methods.expotion.adaptor import AdaptorConfig, ConditionAdaptor
    from expotion.methods.expotion.embedding import VisualConfig
    from expotion.methods.expotion.export import save_adaptor
    from expotion.musicgen.loading import model_signature
    from expotion.data.clips import ClipDataset

    musicgen = load_musicgen(tiny_profile_cfg.musicgen)
    spec = ClipDataset(demo_cache[0] / "val", ("marlin", "synchformer"), 2.0, False).spec
    adaptor = ConditionAdaptor(musicgen.lm, AdaptorConfig(2, VisualConfig(), max_seconds=2.0), spec.dims, 50.0)
    ckpt = save_adaptor(tmp_path / "a.pt", adaptor, model_signature(musicgen), spec)
    models = load_models(ModelSettings(checkpoint=ckpt, musicgen=tiny_profile_cfg.musicgen, profile="tiny",
                                       tiny_dir=Path(tiny_profile_cfg.marlin_path).parent, device="cpu"))
    models = replace(models, conditioning=LookingAhead(models.conditioning, 0.3))
    video = write_video(tmp_path / "v.mp4", moving_frames(100, 64, 80), fps=25)
    session = LiveSession(models, FileCamera(video, 256, as_fast_as_possible=True), "jazz",
                          SamplingSettings(top_k=20), LiveSettings(chunk_s=0.4))
    seen, conditioned = [], []
    before, recondition = session.before_step, session.recondition

    def watch(step):
        before(step)
        seen.append((session.offset, step, session.step_need, session.covered_s()))

    def count():
        recondition()
        conditioned.append(dict(session.feature_counts))

    session.before_step, session.recondition = watch, count
    result = session.run(tmp_path / "o.wav", tmp_path / "o.csv")
    assert result.tokens is not None and torch.equal(result.codes, result.tokens)
    for offset, step, need, covered in seen:
        newest = min(offset + max(step - 1, 0), 200) / 50  # codebook 0 of frame step - 1, within the 4 s planned
        assert need == pytest.approx(newest + 0.3)
        assert covered >= min(need, 100 / 25) - 1e-6  # the video up to the need had arrived before the step
    for name in ("marlin", "synchformer"):
        counts = [c[name] for c in conditioned]
        assert counts == sorted(counts) and counts[-1] > counts[0], name  # rebuilt as features came out


@pytest.mark.gpu
def test_the_bench_runs_a_musicgen_on_cuda(tiny_profile_cfg):
    """bench/live.py's GPU path, with the tiny MusicGen standing in for a released one."""
    import subprocess
    import sys

    root = Path(__file__).parents[1]
    done = subprocess.run([sys.executable, "live.py", "--musicgen", tiny_profile_cfg.musicgen, "--seconds", "3",
                           "--window", "2", "--repeats", "1"], cwd=root / "bench", capture_output=True, text=True,
                          timeout=1800)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "MusicGen (GPU)" in done.stdout and "real-time factor" in done.stdout and "p95" in done.stdout
