"""The app in a real browser: headless Debian Chromium driven by Selenium against `expotion app`.

Needs `chromium` and `chromedriver` (`make browser-deps`, which `make test` runs first). Screenshots of
each tab and the study figure are saved under ``$EXPOTION_TEST_ARTIFACTS`` (default ``test-artifacts/``).
"""
import os
import re
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
from app_support import SYSTEMS, app_args, demo_folder, launch_cli, make_study, stop, tiny_checkpoint
from conftest import moving_frames, write_video

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from expotion.app.study import load_study, trial_order
from expotion.app.study_store import StudyStore
from expotion.cli.main import main as cli_main

ARTIFACTS = Path(os.environ.get("EXPOTION_TEST_ARTIFACTS", "test-artifacts"))
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1280,1500", "--autoplay-policy=no-user-gesture-required")


def browser_binaries() -> tuple[str, str]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        reason = "needs Debian's chromium and chromium-driver: run `make browser-deps`"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return chromium, driver


@pytest.fixture(scope="module")
def app(tiny_profile_cfg, tmp_path_factory):
    """`expotion app --study` as a user starts it, in its own process; yields its URL and files."""
    root = tmp_path_factory.mktemp("browser")
    tiny_checkpoint(tiny_profile_cfg, root / "runs" / "demo" / "adaptor.pt")
    study = make_study(root / "study")
    proc, url = launch_cli(*app_args(tiny_profile_cfg, root / "runs", root / "outputs"), "--study", str(study))
    yield {"url": url, "root": root, "study": study}
    stop(proc)


@pytest.fixture(scope="module")
def study_only_app(tmp_path_factory):
    """What participants get: `expotion app --study-only`, here with a demo folder beside it."""
    root = tmp_path_factory.mktemp("browser-study-only")
    demo, study = demo_folder(root / "demo"), make_study(root / "study")
    proc, url = launch_cli("--runs", str(root / "runs"), "--outputs", str(root / "outputs"),
                           "--demo-manifest", str(demo / "manifest.csv"), "--study", str(study), "--study-only")
    yield {"url": url, "demo": demo, "study": study}
    stop(proc)


def start_chromium(profile: Path, *flags: str):
    """Headless Chromium under chromedriver, with its own profile folder and ``flags`` beside the usual ones."""
    chromium, driver_path = browser_binaries()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROME_FLAGS, *flags):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    driver.set_page_load_timeout(60)
    return driver


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = start_chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield driver
    driver.quit()


def open_tab(driver, name: str) -> None:
    WebDriverWait(driver, 60).until(EC.element_to_be_clickable(
        (By.XPATH, f"//button[@role='tab' and normalize-space()='{name}']"))).click()


def text_of(driver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def test_generate_in_the_browser(app, browser, tmp_path):
    video = write_video(tmp_path / "dance.mp4", moving_frames(75, 96, 128), fps=25)
    browser.get(app["url"])
    open_tab(browser, "Generate")
    browser.find_element(By.CSS_SELECTOR, "#gen-video-in input[type=file]").send_keys(str(video))
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#gen-video-in video"))
    browser.find_element(By.CSS_SELECTOR, "#gen-prompt textarea").send_keys("upbeat pop with drums")
    browser.find_element(By.ID, "gen-run").click()
    player = WebDriverWait(browser, 90).until(lambda d: d.find_element(By.CSS_SELECTOR, "#gen-video-out video"))
    state = WebDriverWait(browser, 30).until(lambda d: d.execute_script(
        "const v = arguments[0]; return v.readyState >= 1 ? {duration: v.duration, error: v.error} : null;", player))
    assert state["error"] is None and abs(state["duration"] - 3.0) < 0.1
    played = browser.execute_async_script(
        "const [v, done] = arguments; v.muted = true;"
        "v.play().then(() => setTimeout(() => done(v.currentTime), 700), e => done(String(e)));", player)
    assert isinstance(played, (int, float)) and played > 0, played  # the browser decodes and plays it
    assert "Generated 3.00 s of music" in text_of(browser, "gen-status")
    figure = WebDriverWait(browser, 30).until(lambda d: d.find_element(By.CSS_SELECTOR, "#gen-figure img"))
    assert browser.execute_script("return arguments[0].naturalWidth;", figure) > 800  # the alignment figure
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "app-generate.png"))


def answer(driver, question: str, score: int) -> None:
    driver.find_element(By.XPATH, f"//*[@id='study-q-{question}']//input[@value='{score}']/..").click()


def test_study_resumes_after_reload_and_stores_rows(app, browser, capsys):
    study = load_study(app["study"])
    browser.get(app["url"])
    open_tab(browser, "Study")
    browser.find_element(By.ID, "study-start").click()
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: "Trial 1 of 4" in text_of(d, "study-header"))
    participant = re.search(r"participant\s+(p-[0-9a-f]+)", text_of(browser, "study-header")).group(1)
    given = [(4, 3, 5, 2), (1, 2, 3, 4)]
    for n, scores in enumerate(given, start=1):
        for question, score in zip(study.questions, scores, strict=True):
            answer(browser, question.id, score)
        browser.find_element(By.ID, "study-submit").click()
        wait.until(lambda d, n=n: f"Trial {n + 1} of 4" in text_of(d, "study-header"))
    browser.refresh()
    wait.until(lambda d: d.find_elements(By.ID, "study-header") and "Trial 3 of 4" in text_of(d, "study-header"))
    wait.until(lambda d: d.execute_script("const v = document.querySelector('#study-video video');"
                                          "return v && v.readyState >= 1;"))
    page = browser.page_source
    for name, directory in SYSTEMS.items():
        assert name not in page and directory not in page
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "app-study.png"))

    order = trial_order(study, StudyStore(study.database).order_secret(), participant)
    with sqlite3.connect(study.database) as db:
        rows = db.execute("SELECT clip, system, question, score FROM responses WHERE participant = ? "
                          "ORDER BY position, question", (participant,)).fetchall()
    expected = [(*order[t], q.id, s) for t, scores in enumerate(given)
                for q, s in sorted(zip(study.questions, scores, strict=True), key=lambda qs: qs[0].id)]
    assert rows == expected  # the first two trials of the recorded order, with the clicked scores

    assert cli_main(["study", "results", str(app["study"]), "--resamples", "1000"]) == 0
    table = capsys.readouterr().out
    assert "1 participants" in table
    (ARTIFACTS / "study-results.txt").write_text(table)
    for name in ("ratings.png", "results.csv"):
        shutil.copy(study.database.parent / "study-results" / name, ARTIFACTS / f"study-{name}")


def trial_shown(driver) -> bool:
    return driver.execute_script("const e = document.getElementById('study-header');"
                                 "return !!e && e.offsetParent !== null;")


def test_new_participant_is_not_resumed_after_reload(app, browser):
    """A shared lab computer: after 'New participant' the page forgets the last person, also across a reload."""
    browser.get(app["url"])
    browser.execute_script("localStorage.clear();")  # no one remembered from an earlier test
    browser.refresh()
    open_tab(browser, "Study")
    id_box = "#study-participant textarea, #study-participant input"
    browser.find_element(By.CSS_SELECTOR, id_box).send_keys("shared-pc")
    browser.find_element(By.ID, "study-start").click()
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: re.search(r"participant\s+shared-pc", text_of(d, "study-header")))
    browser.refresh()
    wait.until(lambda d: d.find_elements(By.ID, "study-header") and "shared-pc" in text_of(d, "study-header"))
    browser.find_element(By.ID, "study-new").click()
    wait.until(lambda d: not trial_shown(d))
    browser.refresh()
    open_tab(browser, "Study")
    box = browser.find_element(By.CSS_SELECTOR, id_box)
    deadline = time.monotonic() + 5  # long enough for the page-load event to resume someone, if it would
    while time.monotonic() < deadline:
        assert not trial_shown(browser) and box.get_attribute("value") == ""
        time.sleep(0.25)


def fetch_status(driver, path: str, method: str = "GET", upload: bool = False) -> list:
    """The page's own ``fetch`` of a server path (relative to the page): [status, body]."""
    return driver.execute_async_script(
        "const [path, method, upload, done] = arguments; let body;"
        "if (upload) { body = new FormData();"
        "  body.append('files', new Blob([new Uint8Array(5000)], {type: 'video/mp4'}), 'clip.mp4'); }"
        "fetch(path, {method, body})"
        "  .then(async r => done([r.status, await r.text()]), e => done(['error', String(e)]));",
        path, method, upload)


def test_study_only_page_refuses_uploads_and_serves_no_demo_folder_file(study_only_app, browser):
    """A participant's browser: the trial video plays, an upload is refused, the demo folder's files are not served."""
    browser.get(study_only_app["url"])
    wait = WebDriverWait(browser, 60)
    wait.until(EC.element_to_be_clickable((By.ID, "study-start"))).click()
    wait.until(lambda d: "Trial 1 of 4" in text_of(d, "study-header"))
    source = wait.until(lambda d: d.execute_script("const v = document.querySelector('#study-video video');"
                                                   "return v && v.readyState >= 1 ? v.currentSrc : null;"))
    assert fetch_status(browser, source)[0] in (200, 206)  # what the page needs is served (206: from its range cache)
    assert not browser.find_elements(By.CSS_SELECTOR, "input[type=file]")  # no upload widget on the page
    assert fetch_status(browser, "gradio_api/upload", "POST", upload=True) == [403, "this server accepts no uploads"]
    demo = study_only_app["demo"]
    for name in ("annotations.json", "manifest.csv", "notes.txt", "dance.mp4"):
        assert fetch_status(browser, f"gradio_api/file={demo / name}")[0] == 403, name
