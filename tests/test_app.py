"""The app through ``gradio_client`` against a launched server: generate, bad input, study blinding and concurrency."""
import base64
import io
import json
import sqlite3
import threading
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
import soundfile as sf
from app_support import SYSTEMS, app_args, free_port, make_study, parse_app_args, tiny_checkpoint
from conftest import moving_frames, write_video

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from expotion.app import generate_tab
from expotion.app.server import build_app


@pytest.fixture(scope="module")
def served(tiny_profile_cfg, tmp_path_factory):
    """A launched app with both tabs: a good and a mismatched checkpoint under runs/, and a two-system study."""
    root = tmp_path_factory.mktemp("app")
    good = tiny_checkpoint(tiny_profile_cfg, root / "runs" / "good" / "adaptor.pt")
    wide = wide_checkpoint(tiny_profile_cfg, root / "runs" / "wide" / "adaptor.pt")
    study = make_study(root / "study")
    port = free_port()
    page, options = build_app(parse_app_args(app_args(tiny_profile_cfg, root / "runs", root / "outputs",
                                                      "--study", str(study))))
    _, url, _ = page.launch(server_port=port, prevent_thread_lock=True, quiet=True, **options)
    yield {"url": url, "page": page, "good": str(good), "wide": str(wide), "root": root, "study": study}
    page.close()


def test_a_port_in_use_is_one_line(served, tiny_profile_cfg, capsys):
    from expotion.cli.main import main

    port = int(served["url"].rstrip("/").rsplit(":", 1)[1])  # the launched app holds it
    root = served["root"]
    assert main(["app", *app_args(tiny_profile_cfg, root / "runs", root / "outputs"), "--host", "127.0.0.1",
                 "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot serve on 127.0.0.1:{port} (") and err.strip().endswith("--port")


def wide_checkpoint(tiny_profile_cfg, path: Path) -> Path:
    """A checkpoint trained on 768-wide features: the tiny extractors give 32, so it must be refused."""
    from expotion.core.rates import DEFAULT_RATES
    from expotion.data.clips import FeatureSpec
    from expotion.methods.expotion.adaptor import AdaptorConfig, ConditionAdaptor
    from expotion.methods.expotion.embedding import VisualConfig
    from expotion.methods.expotion.export import save_adaptor
    from expotion.musicgen.loading import load_musicgen, model_signature

    musicgen = load_musicgen(tiny_profile_cfg.musicgen)
    spec = FeatureSpec({"marlin": (768,), "synchformer": (768,)},
                       {s: getattr(DEFAULT_RATES, s) for s in ("marlin", "synchformer")}, 32)
    adaptor = ConditionAdaptor(musicgen.lm, AdaptorConfig(2, VisualConfig()), spec.dims, 50.0)
    return save_adaptor(path, adaptor, model_signature(musicgen), spec)


def generate(client: Client, video: Path, prompt: str, checkpoint: str, box: str = "") -> tuple:
    return client.predict(handle_file(str(video)), prompt, checkpoint, 0, 3.0, 50, box, api_name="/generate")[:3]


def test_generate_returns_video_and_wav_of_the_video_duration(served, tmp_path):
    client = Client(served["url"], verbose=False)
    video = write_video(tmp_path / "dance.mp4", moving_frames(75, 96, 128), fps=25)
    muxed, wav, status = generate(client, video, "upbeat pop", served["good"])
    (loaded,) = generate_tab._models.values()
    data, sr = sf.read(wav)
    assert sr == 32000 and len(data) == 3 * 32000 and np.abs(data).max() > 0
    with av.open(muxed) as c:
        assert [s.type for s in c.streams] == ["video", "audio"]
        assert float(c.streams.audio[0].duration * c.streams.audio[0].time_base) == pytest.approx(3.0, abs=0.05)
        assert sum(1 for _ in c.decode(video=0)) == 75
    assert status.startswith("Generated 3.00 s of music with adaptor `good`")
    assert "dance.mp4: no face detected" in status  # a notice, not an error: moving squares hold no face
    _, wav2, status2 = generate(client, video, "upbeat pop", served["good"], box="20 20 80 80")
    assert "no face" not in status2  # a fixed face box replaces detection
    assert not np.array_equal(sf.read(wav2)[0], data)  # ... and the face features change the music
    assert [id(m) for m in generate_tab._models.values()] == [id(loaded)]  # loaded once and kept


def test_generate_shows_the_alignment_figure_of_the_video_and_its_music(served, tmp_path):
    """The evaluation's per-clip figure (motion speed with the music's onsets and beats) comes back as a picture."""
    client = Client(served["url"], verbose=False)
    video = write_video(tmp_path / "dance.mp4", moving_frames(75, 96, 128), fps=25)
    plot = client.predict(handle_file(str(video)), "upbeat pop", served["good"], 0, 3.0, 50, "",
                          api_name="/generate")[3]
    assert plot["type"] == "matplotlib"
    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(plot["plot"].split(",", 1)[1])))
    assert image.size[0] > 800 and np.asarray(image.convert("L")).std() > 10  # a drawn figure, not a blank


def test_plain_musicgen_choice(served, tmp_path):
    client = Client(served["url"], verbose=False)
    video = write_video(tmp_path / "v.mp4", moving_frames(50, 64, 80), fps=25)
    _, wav, status = generate(client, video, "jazz", generate_tab.PLAIN_MUSICGEN)
    assert sf.info(wav).duration == pytest.approx(2.0, abs=0.001) and "plain MusicGen" in status
    assert [m.settings.checkpoint for m in generate_tab._models.values()] == [None]  # one set of models in memory


def test_bad_input_gets_a_readable_message(served, tmp_path):
    client = Client(served["url"], verbose=False)
    video = write_video(tmp_path / "v.mp4", moving_frames(50, 64, 80), fps=25)
    cases = {
        "empty prompt": (video, "   ", served["good"], "the prompt is empty"),
        "no video stream": (audio_only(tmp_path / "song.mp4"), "jazz", served["good"],
                            "song.mp4: the video has no frames to follow"),
        "not a video": (garbage(tmp_path / "broken.mp4"), "jazz", served["good"], "broken.mp4"),
        "bad face box": (video, "jazz", served["good"], "face_box must be four numbers 'x0 y0 x1 y1', got '1 2 3'"),
        "mismatched checkpoint": (video, "jazz", served["wide"],
                                  "adaptor expects 'marlin' features of shape (768,), the 'tiny' extractors' output has (32,)"),
    }
    for name, (path, prompt, ckpt, message) in cases.items():
        with pytest.raises(AppError) as err:
            generate(client, path, prompt, ckpt, box="1 2 3" if name == "bad face box" else "")
        assert message in str(err.value), name
        assert "Traceback" not in str(err.value) and 'File "' not in str(err.value), name
        assert "/gradio/" not in str(err.value), name  # the upload's server-side folder is not shown
    with pytest.raises(AppError, match="Upload a video or pick a demo clip"):
        client.predict(None, "jazz", served["good"], 0, 3.0, 50, "", api_name="/generate")


def audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as c:
        a = c.add_stream("aac", rate=32000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 32000), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 32000, 0
        c.mux(a.encode(frame))
        c.mux(a.encode(None))
    return path


def garbage(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    return path


def test_generation_queue_runs_one_request_at_a_time(served):
    generate_fn = next(fn for fn in served["page"].fns.values() if fn.api_name == "generate")
    assert generate_fn.concurrency_limit == 1


class Session:
    """The browser's side of the queue protocol, raw: every byte the server sends is kept."""

    def __init__(self, url: str, session_hash: str):
        self.url, self.hash, self.http = url.rstrip("/"), session_hash, httpx.Client(timeout=120)
        self.received: list[str] = []
        config = self.get("/config").json()
        self.fn_index = {d["api_name"]: i for i, d in enumerate(config["dependencies"]) if d.get("api_name")}

    def get(self, path: str) -> httpx.Response:
        response = self.http.get(self.url + path)
        self.received.append(response.text)
        return response

    def call(self, api_name: str, data: list) -> list:
        index = self.fn_index[api_name]
        body = {"data": data, "fn_index": index, "session_hash": self.hash, "event_data": None, "trigger_id": None}
        self.received.append(self.http.post(f"{self.url}/gradio_api/queue/join", json=body).text)
        with self.http.stream("GET", f"{self.url}/gradio_api/queue/data", params={"session_hash": self.hash}) as r:
            for line in r.iter_lines():
                self.received.append(line)
                if line.startswith("data:"):
                    message = json.loads(line[5:])
                    if message.get("msg") == "process_completed":
                        assert message["success"], message
                        return message["output"]["data"]
        raise AssertionError("the event stream ended without a result")


def test_study_pages_and_payloads_reveal_no_system(served):
    session = Session(served["url"], "blindtest01")
    session.get("/")
    session.get("/gradio_api/info")
    first = session.call("study_start", [""])
    media = [item for item in first if isinstance(item, dict) and item.get("url")]
    for _ in range(2):
        session.call("study_submit", [None, None, "4", "3", "5", "2"])
    for item in media:
        session.received.append(item["url"])
        session.received.append(session.http.get(item["url"]).content.decode("latin-1"))
    text = "\n".join(session.received)
    assert "Trial 1 of 4" in text and "Trial 3 of 4" in text and media  # the payloads were captured
    for name, directory in SYSTEMS.items():
        for secret in (name, directory, str(served["study"].parent / directory)):
            assert secret not in text


def test_two_participants_submitting_through_the_server_lose_no_row(served):
    barrier, errors = threading.Barrier(2), []

    def participant(who: str) -> None:
        try:
            client = Client(served["url"], verbose=False)
            client.predict(who, api_name="/study_start")
            for _ in range(4):
                barrier.wait(timeout=60)
                client.predict("5", "4", "3", "2", api_name="/study_submit")
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)
            barrier.abort()

    threads = [threading.Thread(target=participant, args=(w,)) for w in ("conc-1", "conc-2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with sqlite3.connect(served["study"].with_suffix(".sqlite")) as db:
        rows = db.execute("SELECT participant, position, question, score FROM responses "
                          "WHERE participant LIKE 'conc-%'").fetchall()
    assert len(rows) == len(set(rows)) == 2 * 4 * 4


def test_study_only_page_names_no_model(tiny_profile_cfg, tmp_path):
    """What participants get: the study tab alone, with no model or checkpoint name anywhere in the page."""
    tiny_checkpoint(tiny_profile_cfg, tmp_path / "runs" / "expotion_face_motion" / "adaptor.pt")
    study = make_study(tmp_path / "study")
    page, options = build_app(parse_app_args(app_args(tiny_profile_cfg, tmp_path / "runs", tmp_path / "outputs",
                                                      "--study", str(study), "--study-only")))
    _, url, _ = page.launch(server_port=free_port(), prevent_thread_lock=True, quiet=True, **options)
    try:
        text = httpx.get(url).text + httpx.get(url + "config").text
    finally:
        page.close()
    assert "study-start" in text and "Music for movement" in text
    for word in ("gen-run", "live-start", "musicgen", "expotion", "adaptor.pt", *SYSTEMS, *SYSTEMS.values()):
        assert word not in text.lower(), word


def test_checkpoints_trained_after_start_are_listed_on_page_load(served, tiny_profile_cfg):
    session = Session(served["url"], "reloadtest01")
    config = session.get("/config").json()
    dropdown = next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == "gen-checkpoint")
    load = next(i for i, d in enumerate(config["dependencies"])
                if d["outputs"] == [dropdown] and any(t[1] == "load" for t in d["targets"]))
    newer = tiny_checkpoint(tiny_profile_cfg, served["root"] / "runs" / "later" / "adaptor.pt")
    session.fn_index["checkpoint list"] = load
    update = session.call("checkpoint list", [])[0]
    assert [c[0] for c in update["choices"]][:1] == [str(newer)]
    assert [c[0] for c in update["choices"]][-1] == generate_tab.PLAIN_MUSICGEN


def test_study_asks_for_every_answer_and_does_not_store_a_partial_trial(served):
    client = Client(served["url"], verbose=False)
    with pytest.raises(AppError, match="Press 'Start / resume' first"):
        client.predict("3", "3", "3", "3", api_name="/study_submit")
    client.predict("partial-1", api_name="/study_start")
    with pytest.raises(AppError, match=r"answer every question before continuing \(missing: Musicality, Creativity\)"):
        client.predict(None, "3", "3", None, api_name="/study_submit")
    with sqlite3.connect(served["study"].with_suffix(".sqlite")) as db:
        assert db.execute("SELECT COUNT(*) FROM responses WHERE participant = 'partial-1'").fetchone() == (0,)
    header = client.predict("2", "3", "4", "5", api_name="/study_submit")[2]
    assert "Trial 2 of 4" in header


def test_new_participant_forgets_the_remembered_id(served):
    """A shared lab computer: after 'New participant', loading the page no longer resumes the last person."""
    session = Session(served["url"], "sharedpc01")
    config = session.get("/config").json()
    stored = next(c["id"] for c in config["components"] if c["type"] == "browserstate")
    session.fn_index["page load"] = next(i for i, d in enumerate(config["dependencies"])
                                         if d["inputs"] == [stored] and any(t[1] == "load" for t in d["targets"]))
    started = session.call("study_start", ["shared-1"])
    assert started[0] == {"participant": "shared-1"}  # what the browser keeps
    assert "Trial 1 of 4" in session.call("page load", [started[0]])[5]  # a reload resumes shared-1
    cleared = session.call("study_new_participant", [])
    assert cleared[0] == {"participant": ""} and cleared[2] == "" and cleared[4]["visible"] is False
    assert all(item in ({"__type__": "update"}, None) for item in session.call("page load", [cleared[0]]))
    with pytest.raises(AssertionError, match="Press 'Start / resume' first"):
        session.call("study_submit", [None, None, "4", "3", "5", "2"])  # this page no longer answers as shared-1
