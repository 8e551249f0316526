"""Long videos in constant memory: windowed features equal one pass, chunked decoding equals one pass,
and peak memory does not grow with the video's length."""
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from conftest import moving_frames, write_video

from expotion.core.rates import DEFAULT_RATES
from expotion.data.clips import FeatureSpec
from expotion.data.media import iter_clip_frames, probe_video
from expotion.extractors.bank import Extractors
from expotion.extractors.long_video import plan_windows, video_features
from expotion.methods.expotion.adaptor import AdaptorConfig, ConditionAdaptor
from expotion.methods.expotion.embedding import VisualConfig
from expotion.methods.expotion.export import save_adaptor
from expotion.musicgen.loading import load_musicgen, model_signature
from expotion.musicgen.windows import DECODE_CHUNK, decode_audio


def single_pass(ex: Extractors, video: Path, face_box):
    """The reference: the whole video decoded as one clip and extracted at once."""
    duration = probe_video(video).duration_s
    (_, clip), = iter_clip_frames(video, [(0.0, duration)], ex.cfg.max_short_side)
    return ex.video_features(clip, duration, face_box), duration


def test_windows_start_on_every_stream_grid(tiny_profile_cfg):
    windows = plan_windows(20.0, 4.8, DEFAULT_RATES, 5.0)
    assert [w.start_s for w in windows] == [0.0, 4.8, 9.6, 14.4]
    assert [w.keep_s for w in windows] == [4.8, 4.8, 4.8, None]  # the last one runs to the end
    assert windows[0].decode_s == pytest.approx(4.8 + 0.32)  # a Synchformer segment reaches 0.32 s past its start
    assert windows[-1].decode_s == pytest.approx(5.6)
    assert [w.start_s for w in plan_windows(5.0, 1.0, DEFAULT_RATES, 5.0)] == [0.0, 1.6, 3.2]  # 1 s rounds to the 1.6 s grid


def test_windowed_features_equal_one_pass(tmp_path, tiny_profile_cfg):
    ex = Extractors(tiny_profile_cfg, ("marlin", "synchformer", "raft"))
    video = write_video(tmp_path / "v.mp4", moving_frames(int(7.3 * 25), 96, 128), fps=25)
    box = (20, 10, 100, 90)
    whole, duration = single_pass(ex, video, box)
    stitched = video_features(ex, video, duration, box, window_s=1.6)  # four windows, the last 2.48 s long
    assert len(plan_windows(duration, 1.6, ex.rates, ex.cfg.face_detect_fps)) == 4
    assert sorted(stitched.arrays) == sorted(whole.arrays) == ["marlin", "marlin_mask", "raft", "synchformer"]
    # A window runs the encoders on fewer segments than one pass, and CPU matmul kernels may
    # block other batch shapes differently, so float streams agree to float32 rounding.
    for name, expected in whole.arrays.items():
        if expected.dtype == bool:
            assert np.array_equal(stitched.arrays[name], expected), name
        else:
            np.testing.assert_allclose(stitched.arrays[name], expected, rtol=1e-5, atol=1e-6, err_msg=name)


def test_windowed_face_tracking_equals_one_pass(tmp_path, tiny_profile_cfg):
    """Detected faces are smoothed across window borders exactly as in one pass (a face that leaves for 2.4 s)."""
    import matplotlib.cbook
    from PIL import Image

    portrait = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    face = np.asarray(portrait.resize((128, 160)))
    frames = np.zeros((int(6.6 * 25), 160, 192, 3), np.uint8)
    for i in range(len(frames)):
        if not 40 <= i < 100:
            x = int(32 + 30 * np.sin(i / 12))
            frames[i, :, x : x + 128] = face
    video = write_video(tmp_path / "face.mp4", frames, fps=25)
    ex = Extractors(tiny_profile_cfg, ("marlin",))
    whole, duration = single_pass(ex, video, None)
    stitched = video_features(ex, video, duration, None, window_s=1.6)
    mask = whole.arrays["marlin_mask"]
    assert mask[:5].all() and not mask.all()  # the face is found, and its absence is masked
    for name, expected in whole.arrays.items():
        assert np.array_equal(stitched.arrays[name], expected), name


def test_chunked_decoding_matches_one_pass(tiny_profile_cfg):
    """Past one chunk, EnCodec decodes in pieces with context; joins match a single pass to float32 rounding."""
    musicgen = load_musicgen(tiny_profile_cfg.musicgen)
    frames = DECODE_CHUNK + 200
    tokens = torch.randint(0, musicgen.lm.card, (1, musicgen.lm.n_q, frames), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = musicgen.compression_model.decode(tokens, None)[:, 0].numpy()
    chunked = decode_audio(musicgen, tokens, frames / 50)
    assert chunked.shape == whole.shape == (1, frames * 640)
    assert np.abs(chunked - whole).max() < 1e-6 * max(1.0, np.abs(whole).max())


PEAK_RSS = """
import resource, sys
from expotion.cli.main import main
code = main(sys.argv[1:])
print("PEAK_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "EXIT", code)
"""


def write_long_video(path: Path, seconds: float, fps: int = 25, height: int = 240, width: int = 320) -> Path:
    """A gradient with a moving square, encoded frame by frame (the test process never holds the video)."""
    base = np.tile(np.linspace(0, 200, width, dtype=np.uint8)[None, :, None], (height, 1, 3))
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": "30"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(int(seconds * fps)):
            img = base.copy()
            x = (4 * i) % (width - 32)
            img[40:72, x : x + 32] = 255
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(stream.encode())
    return path


def test_peak_memory_does_not_grow_with_video_length(tmp_path, tiny_profile_cfg):
    """`expotion generate` on a 60 s and a 10 s video in two processes: peak RSS within 1.3x.

    Decoding a 60 s 320x240 video whole, as one window, took 2.4x the memory of 10 s.
    """
    musicgen = load_musicgen(tiny_profile_cfg.musicgen)
    rates = {"marlin": DEFAULT_RATES.marlin, "synchformer": DEFAULT_RATES.synchformer}
    spec = FeatureSpec({"marlin": (32,), "synchformer": (32,)}, rates, 32)
    adaptor = ConditionAdaptor(musicgen.lm, AdaptorConfig(2, VisualConfig(), max_seconds=30.0), spec.dims, 50.0)
    checkpoint = save_adaptor(tmp_path / "adaptor.pt", adaptor, model_signature(musicgen), spec)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    runs = {}
    for seconds in (10, 60):
        video = write_long_video(tmp_path / f"v{seconds}.mp4", seconds)
        args = ["generate", "--video", str(video), "--prompt", "upbeat pop", "--checkpoint", str(checkpoint),
                "--musicgen", tiny_profile_cfg.musicgen, "--profile", "tiny", "--tiny-dir",
                str(Path(tiny_profile_cfg.marlin_path).parent), "--top-k", "20", "--face-box", "100 40 200 140",
                "--extend-stride", "29", "--device", "cpu", "--out", str(tmp_path / f"v{seconds}.wav")]
        runs[seconds] = subprocess.Popen([sys.executable, "-c", PEAK_RSS, *args], stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True, env=env)
    peak = {}
    for seconds, proc in runs.items():
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-2000:]
        words = out.split()
        assert words[words.index("EXIT") + 1] == "0", out + err[-2000:]
        peak[seconds] = int(words[words.index("PEAK_KB") + 1])
    print(f"peak RSS: 10 s {peak[10] / 1024:.0f} MB, 60 s {peak[60] / 1024:.0f} MB, ratio {peak[60] / peak[10]:.3f}")
    assert peak[60] <= 1.3 * peak[10]
