"""The video–music group through ``expotion eval`` and ``expotion generate --plot``: the table with reference and
shuffled-pairs rows, conventions in metrics.json, failed clips with reasons, the stage-1 cache and the figures."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import moving_frames, write_video
from eval_synth import burst_offsets, click_track, write_pan_video, write_wav

from expotion.cli.main import main as expotion_main
from expotion.evaluation import alignment, motion_onsets, plots

SR = 22050
FPS = 24
SECONDS = 6.0
# clip id -> tempo of the motion bursts (and of the reference clicks, which sit on them)
TEMPI = {"c1": 120.0, "c2": 90.0, "c3": 100.0}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def burst_times(bpm: float) -> np.ndarray:
    """Beat times moved to the nearest midpoint between two frames, where a burst has one fastest frame pair."""
    beats = np.arange(0.5, SECONDS - 0.3, 60.0 / bpm)
    return (np.round(beats * FPS - 0.5) + 0.5) / FPS


def clicks_at(times: np.ndarray) -> np.ndarray:
    out = np.zeros(int(SECONDS * SR), np.float32)
    click = click_track(60.0, 0.05, sr=SR, first_beat_s=0.0)
    for t in times:
        i = int(round(t * SR))
        out[i : i + len(click)] += click[: len(out) - i]
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Reference clicks on the bursts; generated music at another tempo; plus a still video and a silent track."""
    root = tmp_path_factory.mktemp("vm")
    for n, (clip, bpm) in enumerate(TEMPI.items()):
        times = burst_times(bpm)
        write_pan_video(root / "videos" / f"{clip}.mp4", burst_offsets(times, SECONDS, FPS), FPS, seed=n)
        write_wav(root / "ref" / f"{clip}.wav", clicks_at(times), SR)
        write_wav(root / "gen" / f"{clip}.wav", click_track(bpm * 1.25, SECONDS, sr=SR, first_beat_s=0.3), SR)
    write_pan_video(root / "videos" / "still.mp4", np.zeros(int(SECONDS * FPS)), FPS)
    write_wav(root / "ref" / "still.wav", click_track(100.0, SECONDS, sr=SR), SR)
    write_wav(root / "gen" / "still.wav", click_track(100.0, SECONDS, sr=SR), SR)
    write_pan_video(root / "videos" / "quiet.mp4", burst_offsets(burst_times(100.0), SECONDS, FPS), FPS, seed=7)
    write_wav(root / "ref" / "quiet.wav", clicks_at(burst_times(100.0)), SR)
    write_wav(root / "gen" / "quiet.wav", np.zeros(int(SECONDS * SR), np.float32), SR)
    return root


def run_eval(data: Path, out: Path, *extra: str, videos: bool = True) -> int:
    return expotion_main(["eval", "--generated", str(data / "gen"), "--reference", str(data / "ref"),
                          *(["--videos", str(data / "videos")] if videos else []), "--out", str(out),
                          "--cache-dir", str(data / "cache"), "--metrics", "video_music", *extra])


@pytest.fixture(scope="module")
def first_run(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("out")
    assert run_eval(data, out, "--plots") == 0
    return out


def test_group_is_filled_for_generated_and_reference_with_the_control(first_run):
    doc = json.loads((first_run / "metrics.json").read_text())
    for section in ("metrics", "reference_metrics"):
        for key in alignment.KEYS:
            entry = doc[section][key]
            assert entry["status"] == "ok" and math.isfinite(entry["value"]), (section, key)
    reference, control = doc["reference_metrics"]["av_align"], doc["controls"]["shuffled pairs, reference"]["av_align"]
    assert reference["value"] >= 0.95  # clicks on the bursts of their own video
    assert control["status"] == "ok" and control["value"] < reference["value"] - 0.5
    # 5 clips with videos, so each audio is scored against the 4 other videos; the pairs with the still video or
    # the silent track fail and are listed.
    assert control["n_clips"] + len(control["excluded_clips"]) == 5 * 4
    assert doc["metrics"]["motion_tempo_error"]["value"] > 15  # generated music runs 25% faster than the motion
    assert doc["reference_metrics"]["motion_tempo_error"]["value"] < 3


def test_failed_clips_have_reasons_and_the_table_no_nan(first_run):
    doc = json.loads((first_run / "metrics.json").read_text())
    excluded = doc["metrics"]["av_align"]["excluded_clips"]
    assert "still video" in excluded["still"]
    assert excluded["quiet"] == "generated: silent audio (peak below -60 dBFS)"
    assert "quiet" not in doc["reference_metrics"]["av_align"]["excluded_clips"]
    assert doc["metrics"]["av_align"]["n_clips"] == 3 and doc["reference_metrics"]["av_align"]["n_clips"] == 4
    text = (first_run / "results.md").read_text()
    assert "nan" not in text.lower()
    with (first_run / "per_clip.csv").open() as f:
        rows = {r["clip_id"]: r for r in csv.DictReader(f)}
    assert float(rows["c1"]["av_align_reference"]) >= 0.95
    assert rows["still"]["av_align"] == "" and "still video" in rows["still"]["alignment_failed"]
    assert float(rows["c2"]["motion_tempo"]) == pytest.approx(90.0, abs=3.0)


def test_results_md_has_the_group_table_and_links_the_figures(first_run):
    text = (first_run / "results.md").read_text()
    section = text[text.index("## Video–music alignment"):]
    header = section.splitlines()[2]
    assert header.startswith("| | AV-Align ↑ | BAS motion→music ↑ | BAS music→motion ↑ | Motion tempo err. (bpm) ↓")
    for row in ("| reference audio |", "| shuffled pairs, generated |", "| shuffled pairs, reference |"):
        assert row in section
    assert "![summary](plots/summary.png)" in section
    for clip in (*TEMPI, "still", "quiet"):
        assert f"[{clip}](plots/{clip}.png)" in section
        assert (first_run / "plots" / f"{clip}.png").read_bytes().startswith(PNG_MAGIC)
    assert (first_run / "plots" / "summary.png").read_bytes().startswith(PNG_MAGIC)


def test_conventions_are_recorded(first_run):
    conv = json.loads((first_run / "metrics.json").read_text())["conventions"]["video_music"]
    flow = conv["av_align"]["optical_flow"]
    assert {k: flow[k] for k in motion_onsets.FARNEBACK} == motion_onsets.FARNEBACK
    assert flow["winsize"] == 15 and flow["poly_sigma"] == 1.2
    assert "±1 frame" in conv["av_align"]["window"]
    assert ">= 0.1 px" in conv["av_align"]["video_peaks"]
    assert conv["beat_alignment"]["sigma_s"] == pytest.approx(0.05)
    assert "seed 0" in conv["shuffled_pairs"]


def test_second_run_reads_the_video_features_from_the_cache(data, first_run, tmp_path):
    assert run_eval(data, tmp_path / "again") == 0
    models = json.loads((tmp_path / "again" / "metrics.json").read_text())["models"]
    assert models["motion"]["computed"] == 0 and models["motion"]["from_cache"] == 5
    assert models["onsets"]["computed"] == 0 and models["onsets"]["from_cache"] == 10
    first = json.loads((first_run / "metrics.json").read_text())["metrics"]["av_align"]["value"]
    assert json.loads((tmp_path / "again" / "metrics.json").read_text())["metrics"]["av_align"]["value"] == first


def test_without_videos_the_group_is_missing_and_no_video_is_read(data, tmp_path):
    assert run_eval(data, tmp_path / "out", videos=False) == 0
    doc = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert doc["metrics"]["av_align"] == {**doc["metrics"]["av_align"], "status": "missing", "reason": "no video given (--videos, or --cache with the source videos)"}
    assert "motion" not in doc["models"] and "onsets" not in doc["models"]


def test_clip_figure_takes_paths_or_arrays(data, tmp_path):
    video = data / "videos" / "c1.mp4"
    samples, sr = sf.read(data / "ref" / "c1.wav", dtype="float32")
    fig = plots.clip_figure(video, {"generated": (samples, sr), "reference": data / "ref" / "c1.wav"}, title="c1")
    assert len(fig.axes) == 4  # motion, two tracks, matches
    assert "AV-Align 1.00" in fig.axes[1].get_title(loc="left")
    out = plots.save_clip_figure(video, data / "gen" / "c1.wav", tmp_path / "fig" / "c1.png")
    assert out.read_bytes().startswith(PNG_MAGIC)


def test_generate_plot_writes_the_figure_next_to_the_wav(tmp_path, tiny_profile_cfg):
    video = write_video(tmp_path / "v.mp4", moving_frames(30, 64, 80), fps=25)
    out = tmp_path / "music" / "o.wav"
    code = expotion_main(["generate", "--video", str(video), "--prompt", "jazz", "--out", str(out), "--plot",
                          "--musicgen", tiny_profile_cfg.musicgen, "--profile", "tiny", "--tiny-dir", tiny_profile_cfg.weights_dir,
                          "--top-k", "50"])
    assert code == 0
    assert (tmp_path / "music" / "o.png").read_bytes().startswith(PNG_MAGIC)


def test_figure_names_from_clip_ids_are_safe_unique_and_linked(tmp_path):
    """A clip named ``summary`` keeps its own figure beside summary.png; ``..`` and ``a b`` get valid files and
    working links; nothing is written outside plots/."""
    import re
    from urllib.parse import unquote

    data, out = tmp_path / "data", tmp_path / "out"
    times = burst_times(120.0)
    for n, clip in enumerate(("summary", "..", "a b")):
        write_pan_video(data / "videos" / f"{clip}.mp4", burst_offsets(times, SECONDS, FPS), FPS, seed=n)
        for side, track in (("ref", clicks_at(times)), ("gen", click_track(150.0, SECONDS, sr=SR, first_beat_s=0.3))):
            written = write_wav(data / side / "new.wav", track, SR)  # soundfile takes the format from the suffix
            written.rename(data / side / f"{clip}.wav")
    assert run_eval(data, out, "--plots") == 0
    pngs = sorted(p.name for p in (out / "plots").iterdir())
    assert len(pngs) == 4 and "summary.png" in pngs  # three clip figures and the summary
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in (out / "plots").iterdir())
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "per_clip.csv", "plots", "results.md"]
    section = (out / "results.md").read_text().split("Per clip: ", 1)[1].splitlines()[0]
    links = dict(re.findall(r"\[((?:\\.|[^\]])+)\]\(([^)]+)\)", section))
    assert {re.sub(r"\\(.)", r"\1", k) for k in links} == {"summary", "..", "a b"}
    targets = [out / unquote(t) for t in links.values()]
    assert len(set(targets)) == 3 and out / "plots" / "summary.png" not in targets
    assert all(t.is_file() and t.parent == out / "plots" for t in targets)
    # the clip "summary" got its own figure, not the summary's: the summary figure is a different picture
    summary_link = next(t for k, t in zip(links, targets) if k == "summary")
    assert summary_link.read_bytes() != (out / "plots" / "summary.png").read_bytes()


@pytest.mark.parametrize("label", ["../../x", "a/b", "..", ".", "a\\b", "tab\there", " "])
def test_a_label_that_is_not_one_folder_name_is_refused_and_nothing_is_written(label, data, tmp_path, capsys):
    out = tmp_path / "deep" / "out"
    code = expotion_main(["eval", "--generated", str(data / "gen"), str(data / "ref"), "--reference",
                          str(data / "ref"), "--out", str(out), "--cache-dir", str(data / "cache"),
                          "--metrics", "video_music", "--label", label, "other"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("expotion eval: --label") and "results folder under --out" in err[0]
    assert not (tmp_path / "deep").exists() and sorted(p.name for p in tmp_path.iterdir()) == []
