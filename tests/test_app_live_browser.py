"""The Live tab in a real browser: headless Chromium's fake camera plays a demo clip (as y4m) into `expotion app`.

Needs `chromium` and `chromedriver` (`make browser-deps`, which `make test` runs first). The screenshot of the
playing tab is saved under ``$EXPOTION_TEST_ARTIFACTS`` (default ``test-artifacts/``).
"""
import csv
import time
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
from app_support import app_args, launch_cli, stop, tiny_checkpoint
from test_app_browser import ARTIFACTS, open_tab, start_chromium, text_of

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from expotion.demo.synth import synthesize_demo  # noqa: E402

WINDOW_S = 2.0  # the checkpoint's generation window: a model trained without the causal option waits for one


def write_y4m(path: Path, frames: np.ndarray, fps: int) -> Path:
    """Uncompressed YUV 4:2:0 (full-range BT.601), the format Chromium's fake camera reads, looped."""
    n, height, width, _ = frames.shape
    height, width = height - height % 2, width - width % 2
    r, g, b = np.moveaxis(frames[:, :height, :width].astype(np.float32), -1, 0)
    y = 0.299 * r + 0.587 * g + 0.114 * b
    u = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
    v = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
    u, v = (c.reshape(n, height // 2, 2, width // 2, 2).mean(axis=(2, 4)) for c in (u, v))
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for i in range(n):
            f.write(b"FRAME\n")
            for plane in (y[i], u[i], v[i]):
                f.write(np.clip(np.round(plane), 0, 255).astype(np.uint8).tobytes())
    return path


@pytest.fixture(scope="module")
def fake_camera(tmp_path_factory) -> Path:
    """A synthetic demo recording (a face moving over a background) as the camera's y4m file."""
    root = tmp_path_factory.mktemp("fake-camera")
    manifest = synthesize_demo(root / "demo", n_recordings=1, duration_s=4.0, n_val=1)
    (video,) = sorted(manifest.parent.rglob("*.mp4"))
    with av.open(str(video)) as container:
        fps = round(float(container.streams.video[0].average_rate))
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    y4m = write_y4m(root / "camera.y4m", frames, fps)
    with av.open(str(y4m)) as container:  # what Chromium will read: every frame, the picture kept
        back = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert back.shape == frames.shape and np.abs(back.astype(int) - frames).mean() < 12
    return y4m


@pytest.fixture(scope="module")
def live_app(tiny_profile_cfg, tmp_path_factory):
    root = tmp_path_factory.mktemp("live-app")
    tiny_checkpoint(tiny_profile_cfg, root / "runs" / "live" / "adaptor.pt", window_s=WINDOW_S)
    proc, url = launch_cli(*app_args(tiny_profile_cfg, root / "runs", root / "outputs"))
    yield {"url": url, "outputs": root / "outputs"}
    stop(proc)


@pytest.fixture(scope="module")
def camera_browser(fake_camera, tmp_path_factory):
    driver = start_chromium(tmp_path_factory.mktemp("chromium-camera-profile"), "--use-fake-device-for-media-stream",
                            "--use-fake-ui-for-media-stream", f"--use-file-for-fake-video-capture={fake_camera}")
    yield driver
    driver.quit()


def progress(folder: Path) -> tuple[int, int]:
    """Samples in the growing wav and rows in the latency log."""
    with open(folder / "live.latency.csv", newline="") as f:
        rows = sum(1 for _ in csv.DictReader(f))
    return sf.info(folder / "live.wav").frames, rows


def shown_latency(driver) -> str:
    return driver.find_element(By.CSS_SELECTOR, "#live-latency input").get_attribute("value")


def test_live_tab_plays_music_for_the_fake_camera(live_app, camera_browser):
    browser, wait = camera_browser, WebDriverWait(camera_browser, 90)
    browser.get(live_app["url"])
    open_tab(browser, "Live")
    browser.find_element(By.CSS_SELECTOR, "#live-camera [title='grant webcam access'] button").click()
    wait.until(lambda d: d.execute_script("const v = document.querySelector('#live-camera video');"
                                          "return v && v.readyState >= 2 && v.videoWidth;"))
    browser.find_element(By.CSS_SELECTOR, "#live-camera button[aria-label='capture photo']").click()  # streaming
    browser.find_element(By.CSS_SELECTOR, "#live-prompt textarea").send_keys("upbeat funk with slap bass")
    browser.find_element(By.ID, "live-start").click()
    wait.until(lambda d: "Playing" in text_of(d, "live-status"))
    assert "not live-capable" in text_of(browser, "live-status") and f"about {WINDOW_S:g} s" in text_of(
        browser, "live-status")
    (folder,) = live_app["outputs"].glob("live-*")
    first = progress(folder)
    assert first[0] > 0 and first[1] > 0
    wait.until(lambda d: progress(folder)[1] >= first[1] + 3)  # more chunks while the camera streams
    grown = progress(folder)
    assert grown[0] > first[0]
    latency = float(shown_latency(browser))  # the shown latency is a number ...
    assert 0 < latency < 30
    player = browser.find_element(By.CSS_SELECTOR, "#live-music audio")
    heard = "const a = arguments[0], b = a.buffered; return [b.length ? b.end(b.length - 1) : 0, a.currentTime];"
    buffered, played = browser.execute_script(heard, player)
    wait.until(lambda d: d.execute_script(heard, player)[0] >= buffered + 1)  # the player receives more music ...
    assert browser.execute_script(heard, player)[1] > played  # ... and plays it
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "app-live.png"))

    browser.find_element(By.ID, "live-stop").click()
    wait.until(lambda d: "Stopped:" in text_of(d, "live-status"))
    status = text_of(browser, "live-status")
    wav, log = folder / "live.wav", folder / "live.latency.csv"
    audio, rate = sf.read(wav)
    assert str(folder) in status and f"{len(audio) / rate:.1f} s of music" in status
    with open(log, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= grown[1] and rate == 32000 and np.abs(audio).max() > 0
    latencies = [float(r["latency_s"]) for r in rows]
    assert min(latencies) >= 0 and latency in [round(x, 2) for x in latencies]  # ... one a chunk was logged with
    # a model that hears whole windows starts a window's music once its video has arrived
    assert all(float(r["needed_video_s"]) >= float(r["video_end_s"]) - 1e-6 for r in rows)
    time.sleep(1)
    assert progress(folder) == (len(audio), len(rows))  # the session has ended: nothing more is written
