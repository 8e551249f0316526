"""The Live tab's camera: frames pushed from the browser come out on the camera's own clock."""
import time

import numpy as np
import pytest

from expotion.app.pushed_camera import PushedCamera


def test_a_pushed_camera_releases_the_newest_frame_on_its_own_clock_and_ends_when_frames_stop():
    """The browser's webcam: frames pushed at any rate come out at the camera's rate, resized to the size offline
    extraction decodes to, each the newest pushed before its tick; when pushes stop, the camera ends."""
    first = np.zeros((480, 640, 3), np.uint8)
    camera = PushedCamera(first, fps=10, max_short_side=96, idle_s=0.5)
    assert camera.info.size == (96, 128) and camera.info.scale == pytest.approx(0.2) and camera.info.duration_s is None
    camera.start()
    start = time.perf_counter()
    for value in range(1, 9):  # 8 frames over 0.8 s, at 25 fps
        time.sleep(0.04)
        camera.push(np.full((240, 320, 3), value * 20, np.uint8))  # another size: resized to the first's
    frames = []
    while (frame := camera.next_frame(block=True)) is not None:
        frames.append(frame)
    assert [f.time_s for f in frames] == pytest.approx([i / 10 for i in range(len(frames))])
    assert 0.3 / 0.1 <= len(frames) <= (0.32 + 0.5) / 0.1 + 2  # its own clock, until 0.5 s without a push
    assert camera.went_idle
    for frame in frames:
        assert frame.image.shape == (96, 128, 3) and frame.arrived - start >= frame.time_s - 0.01
    values = [int(f.image[0, 0, 0]) for f in frames]
    assert values == sorted(values) and values[0] == 0 and values[-1] == 160  # newest first, never older
    assert len(set(values)) < 9  # at 25 pushes a second against 10 ticks, frames were dropped


def test_stopping_a_pushed_camera_ends_its_frames():
    camera = PushedCamera(np.zeros((64, 80, 3), np.uint8), fps=20, max_short_side=96).start()
    assert camera.next_frame(block=True) is not None
    camera.stop()
    while (frame := camera.next_frame(block=True)) is not None:
        pass
    assert frame is None and not camera.went_idle


def test_start_refuses_an_empty_prompt_in_one_line(tiny_profile_cfg, tmp_path):
    """Plain MusicGen needs a prompt: Start says so before it loads a model or waits for the camera."""
    from app_support import app_args, free_port, parse_app_args
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from expotion.app.generate_tab import PLAIN_MUSICGEN
    from expotion.app.server import build_app

    page, options = build_app(parse_app_args(app_args(tiny_profile_cfg, tmp_path / "runs", tmp_path / "outputs")))
    _, url, _ = page.launch(server_port=free_port(), prevent_thread_lock=True, quiet=True, **options)
    try:
        with pytest.raises(AppError, match="the prompt is empty"):
            Client(url, verbose=False).predict("  ", PLAIN_MUSICGEN, 0, 3.0, 50, 0.5, 60, api_name="/live")
    finally:
        page.close()
    assert not list((tmp_path / "outputs").iterdir())  # no session folder
