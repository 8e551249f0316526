import av
import numpy as np
import pytest
from conftest import moving_frames, write_video

from expotion.data.media import MediaError, is_variable_rate, iter_clip_frames, probe_video, read_audio


def test_one_pass_yields_each_window_with_relative_timestamps(tmp_path):
    path = write_video(tmp_path / "v.mp4", moving_frames(100), fps=25)  # 4 s
    info = probe_video(path)
    assert (info.width, info.height, info.fps) == (80, 64, 25.0) and info.duration_s == pytest.approx(4.0, abs=0.05)
    out = dict(iter_clip_frames(path, [(0.0, 2.0), (2.0, 2.0)]))
    assert set(out) == {0, 1}
    for clip in out.values():
        assert clip.frames.shape == (50, 64, 80, 3)
        assert np.allclose(clip.times, np.arange(50) / 25, atol=1e-3)
        assert clip.notes == []
    (_, whole), = iter_clip_frames(path, [(0.0, 4.0)])
    assert np.array_equal(out[0].frames, whole.frames[:50])
    assert np.array_equal(out[1].frames, whole.frames[50:])  # the second window is frames 50-99 of the video


def test_decode_downscales_large_frames(tmp_path):
    path = write_video(tmp_path / "v.mp4", moving_frames(10, 128, 160), fps=10)
    (_, clip), = iter_clip_frames(path, [(0.0, 1.0)], max_short_side=64)
    assert clip.frames.shape[1:] == (64, 80, 3) and clip.scale == pytest.approx(0.5)


def test_window_past_the_end_is_reported_as_truncated(tmp_path):
    path = write_video(tmp_path / "v.mp4", moving_frames(40), fps=20)  # 2 s
    out = dict(iter_clip_frames(path, [(0.0, 1.0), (1.0, 2.0)]))
    assert out[0].frames.shape[0] == 20
    assert isinstance(out[1], MediaError) and "truncated" in str(out[1])


def test_variable_frame_rate_is_noted_and_resampled_by_timestamp(tmp_path):
    pts = [i * 40 for i in range(25)] + [1000 + i * 100 for i in range(10)]  # 25 fps, then 10 fps
    path = write_video(tmp_path / "vfr.mkv", moving_frames(35), fps=25, pts=pts)
    (_, clip), = iter_clip_frames(path, [(0.0, 1.9)])
    assert "variable frame rate" in clip.notes[0]
    assert is_variable_rate(clip.times) and not is_variable_rate(np.arange(10) / 25)


def test_odd_resolution_decodes(tmp_path):
    path = write_video(tmp_path / "odd.mkv", moving_frames(10, 67, 91), fps=10, codec="ffv1")
    (_, clip), = iter_clip_frames(path, [(0.0, 1.0)])
    assert clip.frames.shape == (10, 67, 91, 3)


@pytest.mark.parametrize("shape, message", [((2, 24, 40), "too small"), ((2, 32, 8200), "too large")])
def test_unusable_resolution(tmp_path, shape, message):
    path = write_video(tmp_path / "r.mkv", np.zeros((*shape, 3), np.uint8), fps=10, codec="ffv1")
    with pytest.raises(MediaError, match=message):
        probe_video(path)


def test_corrupt_and_missing_files(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x01not a video" * 100)
    with pytest.raises(MediaError, match="junk.mp4: corrupt or unreadable"):
        probe_video(junk)
    good = write_video(tmp_path / "good.mp4", moving_frames(50), fps=25)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(MediaError, match="cut.mp4"):
        probe_video(cut)
    with pytest.raises(MediaError, match="file not found"):
        probe_video(tmp_path / "absent.mp4")


def test_audio_only_file_has_no_video_stream(tmp_path):
    import soundfile as sf

    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(16000, np.float32), 16000)
    with pytest.raises(MediaError, match="no video stream"):
        probe_video(wav)
    assert read_audio(wav, 32000).shape == (32000,)


def test_video_without_audio_stream(tmp_path):
    path = write_video(tmp_path / "v.mp4", moving_frames(10), fps=10)
    with pytest.raises(MediaError, match="no audio stream"):
        read_audio(path, 32000, align_to_video=True)


def test_aac_audio_is_aligned_to_the_first_video_frame(tmp_path):
    sr = 32000
    audio = np.zeros(2 * sr, np.float32)
    audio[sr : sr + 320] = 0.8  # a 10 ms click at exactly 1.0 s
    path = write_video(tmp_path / "av.mp4", moving_frames(50), fps=25, audio=audio, sample_rate=sr)
    got = read_audio(path, sr, align_to_video=True)
    onset = int(np.argmax(np.abs(got) > 0.2))
    assert abs(onset - sr) < 0.005 * sr  # within 5 ms: the AAC priming samples are removed


def test_clip_video_starting_between_frames_of_an_ntsc_source(tmp_path):
    """A 29.97 fps source cut at 1 s: the held first frame and x264's reordering still give a valid mp4."""
    from fractions import Fraction

    import soundfile as sf

    from expotion.data.video_writing import ClipVideo, write_clip_videos

    src = tmp_path / "ntsc.mp4"
    frames = moving_frames(120, h=64, w=80)
    with av.open(str(src), "w") as out:
        vs = out.add_stream("libx264", rate=Fraction(30000, 1001))
        vs.width, vs.height, vs.pix_fmt = 80, 64, "yuv420p"
        for img in frames:
            out.mux(vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(vs.encode())
    wav = tmp_path / "music.wav"
    sf.write(wav, np.zeros(32000 * 2, dtype=np.float32), 32000)
    clip = ClipVideo(1.0, 2.0, wav, tmp_path / "clip.mp4")
    assert list(write_clip_videos(src, [clip])) == [(0, None)]
    with av.open(str(clip.out)) as c:
        n = sum(1 for _ in c.decode(video=0))
    assert n in (60, 61)  # the frames in [1, 3) s, plus the one held at the start
