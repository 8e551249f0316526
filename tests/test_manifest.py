import json

import pytest

from expotion.manifest import ManifestError, chop, load_manifest


def write_csv(tmp_path, rows, header="id,video,audio,caption,split,face_box"):
    path = tmp_path / "manifest.csv"
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def test_csv_rows_resolve_inside_root(tmp_path):
    path = write_csv(tmp_path, ["a,v/a.mp4,m/a.wav,calm piano,train,10 20 110 120", "b,v/b.mp4,,drums,val,"])
    a, b = load_manifest(path)
    assert a.video == tmp_path / "v/a.mp4" and a.audio == tmp_path / "m/a.wav"
    assert a.face_box == (10, 20, 110, 120) and a.split == "train"
    assert b.audio is None and b.face_box is None and b.split == "val"
    assert a.relative(a.video) == "v/a.mp4"


def test_jsonl_with_default_id_and_video_audio(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"video": "clips/take1.mp4", "audio": "@video", "caption": "x", "split": "test",
                                "face_box": [1, 2, 30, 40]}) + "\n")
    (rec,) = load_manifest(path)
    assert rec.id == "take1" and rec.audio is None and rec.face_box == (1, 2, 30, 40)


@pytest.mark.parametrize("bad", ["../outside.mp4", "/etc/passwd", "v/../../x.mp4"])
def test_paths_escaping_the_root_are_rejected(tmp_path, bad):
    path = write_csv(tmp_path, [f"a,{bad},,cap,train,"])
    with pytest.raises(ManifestError, match="escapes the data root"):
        load_manifest(path)


def test_explicit_data_root(tmp_path):
    (tmp_path / "meta").mkdir()
    path = tmp_path / "meta" / "m.csv"
    path.write_text("video,caption\nvideos/a.mp4,cap\n")
    (rec,) = load_manifest(path, data_root=tmp_path)
    assert rec.video == tmp_path / "videos/a.mp4"
    with pytest.raises(ManifestError, match="escapes"):
        load_manifest(write_csv(tmp_path, ["a,../a.mp4,,c,train,"]), data_root=tmp_path / "meta")


def test_all_row_problems_reported_together(tmp_path):
    path = write_csv(tmp_path, ["a,a.mp4,,c,train,", "a,b.mp4,,c,train,", "b,b.mp4,,c,train,1 2 3", "c,,,c,train,"])
    with pytest.raises(ManifestError) as err:
        load_manifest(path)
    text = str(err.value)
    assert "face_box must be four numbers" in text and "duplicate id 'a'" in text and "empty path" in text


def test_missing_caption_is_kept_for_a_per_clip_skip(tmp_path):
    (rec,) = load_manifest(write_csv(tmp_path, ["a,a.mp4,,,train,"]))
    assert rec.caption == ""


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        load_manifest(tmp_path / "nope.csv")
    other = tmp_path / "m.txt"
    other.write_text("x")
    with pytest.raises(ManifestError, match=".csv or .jsonl"):
        load_manifest(other)


@pytest.mark.parametrize("duration, clip, starts", [(30.0, 10.0, [0, 10, 20]), (29.9, 10.0, [0, 10]),
                                                    (9.99, 10.0, []), (5.0, 2.0, [0, 2])])
def test_chop_into_whole_clips(tmp_path, duration, clip, starts):
    (rec,) = load_manifest(write_csv(tmp_path, ["rec,a.mp4,,c,train,"]))
    clips = chop(rec, duration, clip)
    assert [c.start_s for c in clips] == starts
    assert [c.id for c in clips] == [f"rec-{i:03d}" for i in range(len(starts))]
