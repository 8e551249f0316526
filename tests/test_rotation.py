"""Videos with a display-matrix rotation (phones) are seen upright by every stage: precompute, generation's
clip videos, evaluation. Face boxes are given in the upright picture's pixels."""
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
from conftest import precompute_config as config

H, W, N, FPS = 64, 96, 50, 25


def upright_frames(n: int = N) -> np.ndarray:
    """Smooth gradients with a bright square moving right from the top-left corner: any turn or mirror shows."""
    y, x = np.mgrid[0:H, 0:W]
    frames = np.empty((n, H, W, 3), np.uint8)
    for i in range(n):
        frame = np.stack([x * 2, y * 3, np.full_like(x, 60)], axis=-1)
        frame[4:20, 4 + i : 20 + i] = (250, 250, 40)
        frames[i] = frame
    return frames


def write_rotated(path: Path, upright: np.ndarray, rotation: int, codec: str) -> Path:
    """Store the pictures turned so that a player, applying ``rotation`` (counter-clockwise degrees, PyAV's
    convention for the display matrix), shows ``upright``: as a phone held upright records."""
    stored = np.rot90(upright, k=-(rotation // 90), axes=(1, 2))
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=FPS)
        stream.width, stream.height = stored.shape[2], stored.shape[1]
        stream.pix_fmt = "bgr0" if codec == "ffv1" else "yuv420p"
        if rotation:
            stream.set_display_rotation(rotation)
        for img in stored:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")))
        out.mux(stream.encode())
    return path


CODECS = {"ffv1": (".mkv", 0.0), "libx264": (".mp4", 4.0)}  # container, mean abs tolerance (lossless: exact)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("rotation", [-90, 90, 180])
def test_precompute_and_eval_decode_rotated_videos_upright(tmp_path, rotation, codec):
    from expotion.data.media import iter_clip_frames, probe_video
    from expotion.evaluation.video import VideoClip, uniform_frames

    suffix, tolerance = CODECS[codec]
    frames = upright_frames()
    path = write_rotated(tmp_path / f"rotated{suffix}", frames, rotation, codec)
    info = probe_video(path)
    assert (info.width, info.height, info.rotation % 360) == (W, H, rotation % 360)
    ((_, clip),) = iter_clip_frames(path, [(0.0, 1.0)])
    assert clip.frames.shape == (FPS, H, W, 3)
    assert np.abs(clip.frames.astype(float) - frames[:FPS]).mean() <= tolerance
    seen = np.stack(uniform_frames(VideoClip(path), 5))
    chosen = np.linspace(0, N - 1, 5).astype(int)
    assert seen.shape == (5, H, W, 3) and np.abs(seen.astype(float) - frames[chosen]).mean() <= tolerance


def test_eval_motion_of_a_rotated_video_equals_the_upright_ones(tmp_path):
    from expotion.evaluation.motion_onsets import video_motion

    frames = upright_frames()
    rotated = video_motion(write_rotated(tmp_path / "rotated.mkv", frames, -90, "ffv1"))
    upright = video_motion(write_rotated(tmp_path / "upright.mkv", frames, 0, "ffv1"))
    assert rotated.keys() == upright.keys()
    for key in upright:
        assert np.array_equal(rotated[key], upright[key]), key


def test_generated_clip_videos_keep_the_rotation(tmp_path):
    """The clip mp4s generation cuts from a rotated recording show upright too (the rotation is carried over)."""
    from expotion.data.media import iter_clip_frames, probe_video
    from expotion.data.video_writing import ClipVideo, write_clip_videos

    frames = upright_frames()
    source = write_rotated(tmp_path / "rotated.mkv", frames, -90, "ffv1")
    sf.write(tmp_path / "music.wav", np.zeros(32000, np.float32), 32000)
    out = tmp_path / "clip.mp4"
    assert list(write_clip_videos(source, [ClipVideo(0.4, 1.0, tmp_path / "music.wav", out)])) == [(0, None)]
    assert probe_video(out).rotation == -90
    ((_, clip),) = iter_clip_frames(out, [(0.0, 1.0)])
    assert np.abs(clip.frames.astype(float) - frames[10 : 10 + FPS]).mean() <= CODECS["libx264"][1]


def test_precompute_features_of_a_rotated_recording_equal_the_upright_ones(tmp_path, tiny_profile_cfg):
    """The face box is in upright pixels: here it lies outside the stored (sideways, 64 wide) picture, and is
    still the same face crop; every feature equals the upright file's."""
    import h5py

    from expotion.precompute.pipeline import run

    frames = upright_frames(100)
    write_rotated(tmp_path / "upright.mkv", frames, 0, "ffv1")
    write_rotated(tmp_path / "rotated.mkv", frames, -90, "ffv1")
    (tmp_path / "m.csv").write_text("id,video,caption,split,face_box\nup,upright.mkv,x,train,66 4 94 40\n"
                                    "rot,rotated.mkv,x,val,66 4 94 40\n")
    summary = run(config(tmp_path / "m.csv", tmp_path / "cache", tiny_profile_cfg, names=("marlin", "raft")))
    assert summary.skipped == [] and summary.written == {"train": 2, "val": 2}
    with h5py.File(tmp_path / "cache/train/shard-00000.h5") as up, h5py.File(tmp_path / "cache/val/shard-00000.h5") as rot:
        for clip in ("000", "001"):
            for name in ("marlin", "marlin_mask", "raft"):
                assert np.array_equal(up[f"clips/up-{clip}/{name}"][()], rot[f"clips/rot-{clip}/{name}"][()]), name
