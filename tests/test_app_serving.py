"""What a launched app accepts and hands out, over real HTTP: upload limits, no uploads in
``--study-only``, and only the files a page needs (never the demo folder's other files or the study's)."""
from pathlib import Path

import httpx
import pytest
from app_support import demo_folder, launch_cli, make_study, parse_app_args, stop

pytest.importorskip("gradio")


def launch(root: Path, *extra: str) -> dict:
    """``expotion app`` with a demo folder and a study, in its own process."""
    demo, study = demo_folder(root / "demo"), make_study(root / "study")
    proc, url = launch_cli("--runs", str(root / "runs"), "--outputs", str(root / "outputs"),
                           "--demo-manifest", str(demo / "manifest.csv"), "--study", str(study), *extra)
    return {"proc": proc, "url": url, "demo": demo, "study": study}


@pytest.fixture(scope="module")
def full_app(tmp_path_factory):
    app = launch(tmp_path_factory.mktemp("full"), "--max-upload-mb", "1")
    yield app
    stop(app["proc"])


@pytest.fixture(scope="module")
def study_only_app(tmp_path_factory):
    app = launch(tmp_path_factory.mktemp("study-only"), "--study-only")
    yield app
    stop(app["proc"])


def upload(url: str, name: str, size: int) -> httpx.Response:
    return httpx.post(f"{url}gradio_api/upload", files={"files": (name, b"\0" * size, "video/mp4")}, timeout=60)


def fetch(url: str, path: Path | str) -> httpx.Response:
    return httpx.get(f"{url}gradio_api/file={path}", timeout=60)


def test_uploads_over_the_limit_are_refused_before_they_are_stored(full_app):
    url = full_app["url"]
    big = upload(url, "big.mp4", 2 * 1024 * 1024)
    assert big.status_code == 413 and "maximum allowed size of 1048576 bytes" in big.text
    small = upload(url, "small.mp4", 1000)
    assert small.status_code == 200  # the limit, not a blanket refusal
    (stored,) = small.json()
    assert Path(stored).stat().st_size == 1000 and fetch(url, stored).status_code == 200
    assert httpx.get(f"{url}config").json()["max_file_size"] == 1024 * 1024  # the page checks it too


def test_the_upload_limit_has_a_default_and_refuses_nonsense(tmp_path, capsys):
    from expotion.app.server import DEFAULT_MAX_UPLOAD_MB, build_app

    args = parse_app_args(["--runs", str(tmp_path), "--outputs", str(tmp_path / "out"),
                           "--demo-manifest", str(tmp_path / "none.csv")])
    assert args.max_upload_mb == DEFAULT_MAX_UPLOAD_MB == 100
    assert build_app(args)[1]["max_file_size"] == 100 * 1024 * 1024
    for bad in ("0", "-5"):
        with pytest.raises(SystemExit):
            parse_app_args(["--max-upload-mb", bad])
        assert "--max-upload-mb: must be a positive number of megabytes" in capsys.readouterr().err


def test_study_only_refuses_every_upload(study_only_app):
    url = study_only_app["url"]
    for name, size in (("video.mp4", 200_000), ("tiny.mp4", 10), ("empty.mp4", 0)):
        refused = upload(url, name, size)
        assert refused.status_code == 403 and refused.text == "this server accepts no uploads", name
    form = httpx.post(f"{url}gradio_api/component_server", data={"component_id": "1"},
                      files={"files": ("x.bin", b"x" * 100)}, timeout=60)
    assert form.status_code == 403  # any multipart request, whatever its route
    assert httpx.get(f"{url}config").json()["max_file_size"] == 0


@pytest.mark.parametrize("which", ["full_app", "study_only_app"])
def test_only_the_files_a_page_needs_are_served(which, request):
    app = request.getfixturevalue(which)
    url, demo, study = app["url"], app["demo"], app["study"]
    for path in (demo / "annotations.json", demo / "manifest.csv", demo / "notes.txt", demo / "unused.mp4",
                 demo / "dance.mp4", study, study.with_suffix(".sqlite"), study.parent / "videos" / "clip-a.mp4"):
        assert path.is_file(), path
        assert fetch(url, path).status_code == 403, path
    config = httpx.get(f"{url}config").json()
    examples = [c for c in config["components"] if c["type"] == "dataset"]
    if which == "full_app":  # the demo clip the page offers is served, as Gradio's cached copy
        (sample,) = examples[0]["props"]["samples"]
        assert sample[0]["orig_name"] == "dance.mp4" and str(demo) not in sample[0]["path"]
        served = httpx.get(sample[0]["url"], timeout=60)
        assert served.status_code == 200 and served.content == (demo / "dance.mp4").read_bytes()
    else:
        assert not examples


def test_a_study_trial_video_is_still_served(study_only_app):
    from gradio_client import Client

    client = Client(study_only_app["url"], verbose=False)
    shown = client.predict("served-1", api_name="/study_start")
    header, video = shown[2], shown[3]
    assert "Trial 1 of 4" in header
    video = video["video"] if isinstance(video, dict) else video
    assert Path(video).read_bytes()[4:8] == b"ftyp"  # downloaded through the file route
