import json

import pytest

from expotion.data.manifest import ManifestError, check_face_box, chop, load_manifest


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


# ---- malformed files: every problem at once, at its real line --------------------------------------
def problems_of(path) -> list[str]:
    with pytest.raises(ManifestError) as err:
        load_manifest(path)
    return [line.strip() for line in str(err.value).splitlines()[1:]]


def test_jsonl_problems_are_all_reported_with_their_lines(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join([
        json.dumps({"video": "a.mp4", "caption": "ok"}),      # 1
        "",                                                    # 2: blank lines do not shift the count
        '["video", "b.mp4"]',                                  # 3: valid JSON, not an object
        "{not json",                                           # 4
        "",                                                    # 5
        json.dumps({"video": "c.mp4", "caption": 7, "id": None, "split": ["x"]}),  # 6: non-strings
        json.dumps({"video": "d.mp4", "face_box": [1, 2, True, 4]}),               # 7
        "42",                                                  # 8
        json.dumps({"video": "a.mp4"}),                        # 9: duplicate id 'a'
    ]) + "\n")
    problems = problems_of(path)
    assert [p.split(": ")[0] for p in problems] == [f"{path}:{n}" for n in (3, 4, 6, 7, 8, 9)]
    assert "expected a JSON object" in problems[0] and "got a list" in problems[0]
    assert "invalid JSON" in problems[1]
    assert "'caption' must be a string, got a number 7" in problems[2]
    assert "'split' must be a string, got a list" in problems[2] and "'id'" not in problems[2]  # null = not given
    assert "'face_box' must be a string or a list of four numbers" in problems[3]
    assert "got a number" in problems[4]
    assert "duplicate id 'a' (first on line 1)" in problems[5]


def test_a_jsonl_row_without_video_names_its_unknown_keys(tmp_path):
    path = tmp_path / "m3.jsonl"
    path.write_text("\n".join([
        json.dumps({"video": "a.mp4", "caption": "ok"}),
        json.dumps({"vdeo": "b.mp4", "caption": "ok"}),
        json.dumps({"id": "c", "caption": "ok", "vid": "c.mp4", "Split": "val"}),
        json.dumps({"id": "d", "caption": "ok"}),
        json.dumps({"video": "", "caption": "ok"}),
    ]) + "\n")
    assert problems_of(path) == [f"{path}:2: no 'video' (unknown key 'vdeo')",
                                 f"{path}:3: no 'video' (unknown keys 'vid', 'Split')",
                                 f"{path}:4: no 'video'",
                                 f"{path}:5: empty path"]


def test_csv_rows_with_extra_or_missing_fields_are_errors(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("\n".join([
        "id,video,audio,caption,split",        # 1
        "a,a.mp4,,calm,train",                 # 2
        "",                                    # 3
        "b,b.mp4,,drums,train,extra",          # 4: one field too many
        "",                                    # 5
        "c,c.mp4,music/c.wav",                 # 6: short row: 'audio' must not silently mean "video's audio"
        "d,d.mp4,,\"an open quote,train",      # 7: swallows the rest of the file
        "e,e.mp4,,x,train",                    # 8
    ]) + "\n")
    problems = problems_of(path)
    assert problems[0] == f"{path}:4: 6 fields, but the header has 5 (id,video,audio,caption,split)"
    assert problems[1] == f"{path}:6: 3 fields, but the header has 5 (id,video,audio,caption,split)"
    assert problems[2].startswith(f"{path}:7-8: 4 fields") and "quote left open" in problems[2]
    assert len(problems) == 3


def test_csv_with_byte_order_mark_keeps_its_first_column(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes("\ufeffid,video,caption\r\nrec-1,v.mp4,café\r\n".encode())
    (rec,) = load_manifest(path)
    assert rec.id == "rec-1" and rec.caption == "café"
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_bytes(("\ufeff" + json.dumps({"id": "x", "video": "v.mp4"}) + "\n").encode())
    assert load_manifest(jsonl)[0].id == "x"


def test_line_numbers_count_blank_lines_and_multiline_fields(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text('id,video,caption\n\na,a.mp4,"two\nlines"\n\n\nb,../x.mp4,c\n')
    assert problems_of(path) == [f"{path}:7: path '../x.mp4' escapes the data root {tmp_path}"]


def test_undecodable_empty_and_headerless_manifests(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes(b"id,video\na,a.mp4\nb,\xff.mp4\n")
    with pytest.raises(ManifestError, match=r"m.csv:3: not UTF-8 text"):
        load_manifest(path)
    path.write_text("id,video,caption\n\n")
    with pytest.raises(ManifestError, match="lists no recordings"):
        load_manifest(path)
    path.write_text("\n")
    with pytest.raises(ManifestError, match="empty manifest"):
        load_manifest(path)
    path.write_text("id,video,video\na,b,c\n")
    with pytest.raises(ManifestError, match="m.csv:1: CSV header repeats 'video'"):
        load_manifest(path)


@pytest.mark.parametrize("duration, starts", [(19.99, [0, 9.98]), (25.0, [0, 10, 15]), (20.0, [0, 10]),
                                              (20.01, [0, 10]), (9.0, []), (10.5, [0, 0.5])])
def test_keep_tail_adds_one_overlapping_clip_with_the_next_id(tmp_path, duration, starts):
    (rec,) = load_manifest(write_csv(tmp_path, ["rec,a.mp4,,c,train,"]))
    clips = chop(rec, duration, 10.0, keep_tail=True)
    assert [c.start_s for c in clips] == pytest.approx(starts)
    assert [c.id for c in clips] == [f"rec-{i:03d}" for i in range(len(starts))]
    assert all(c.start_s + c.duration_s <= duration + 1e-9 for c in clips)
    regular = chop(rec, duration, 10.0)
    assert clips[: len(regular)] == regular  # the regular clips keep their ids and windows


def test_face_boxes_outside_the_frame_are_refused_and_mostly_outside_ones_warned():
    assert check_face_box(None, 320, 256, where="m.csv:2: face_box") is None
    assert check_face_box((100, 18, 220, 138), 320, 256, where="m.csv:2: face_box") is None
    assert check_face_box((280, 0, 360, 80), 320, 256, where="m.csv:2: face_box") is None  # half inside
    assert check_face_box((300, 200, 400, 300), 320, 256, where="m.csv:2: face_box") == (
        "m.csv:2: face_box 300 200 400 300: 89% of the box lies outside the 320x256 frame; the face crop is clipped")
    with pytest.raises(ManifestError) as err:
        check_face_box((900, 10, 1000, 80), 320, 256, where="--face-box")
    assert str(err.value) == "--face-box 900 10 1000 80 does not overlap the 320x256 frame"
    with pytest.raises(ManifestError, match="^x: face_box 320 0 400 80 does not overlap"):  # touching an edge
        check_face_box((320, 0, 400, 80), 320, 256, where="x: face_box")


# ---- names, captions and boxes refused with their line, before any work ---------------------------
@pytest.mark.parametrize("split", ["../../x", "../other-cache/train", "a/b", ".hidden", "..", "tr ain", "/abs"])
def test_a_split_that_is_not_a_plain_name_is_refused_with_its_line(tmp_path, split):
    path = write_csv(tmp_path, ["a,a.mp4,,c,train,", f'b,b.mp4,,c,"{split}",'])
    assert problems_of(path) == [f"{path}:3: split {split!r} is not a name (letters, digits, '-', '_' and '.', "
                                 "not leading '.'): it names a folder of the cache"]


def test_split_names_with_dots_dashes_and_underscores_are_kept(tmp_path):
    path = write_csv(tmp_path, ["a,a.mp4,,c,train-2.v1,", "b,b.mp4,,c,val_A,"])
    assert [r.split for r in load_manifest(path)] == ["train-2.v1", "val_A"]


def test_a_face_box_under_the_minimum_size_is_refused_with_its_line(tmp_path):
    from expotion.data.manifest import MIN_FACE_SIDE

    path = write_csv(tmp_path, ["a,a.mp4,,c,train,10 10 11 11", f"b,b.mp4,,c,train,0 0 {MIN_FACE_SIDE} 200"])
    assert problems_of(path) == [f"{path}:2: face_box '10 10 11 11' is 1x1 px; a face box's short side must be at "
                                 f"least {MIN_FACE_SIDE} source pixels (leave it empty to detect the face)"]


def test_control_characters_in_captions_are_refused_with_their_line(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text('id,video,caption\na,a.mp4,"calm\nlate-night piano"\nb,b.mp4,drums\x00 and bass\n'
                    "c,c.mp4,\x1b[31mred\x7f\n")
    assert problems_of(path) == [f"{path}:4: caption holds control character(s) U+0000; remove them",
                                 f"{path}:5: caption holds control character(s) U+001B, U+007F; remove them"]
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text(json.dumps({"video": "a.mp4", "caption": "ok\tfine"}) + "\n"
                     + json.dumps({"video": "b.mp4", "caption": "nul\u0000here"}) + "\n")
    assert problems_of(jsonl) == [f"{jsonl}:2: caption holds control character(s) U+0000; remove them"]


def test_a_manifest_that_is_a_folder_or_a_symlink_loop_is_named_in_one_line(tmp_path, capsys, tiny_profile_cfg):
    from pathlib import Path

    from expotion.cli.main import main

    folder = tmp_path / "data"
    folder.mkdir()
    loop = tmp_path / "loop.csv"
    loop.symlink_to(tmp_path / "other.csv")
    (tmp_path / "other.csv").symlink_to(loop)
    dangling = tmp_path / "dangling.csv"
    dangling.symlink_to(tmp_path / "gone.csv")
    with pytest.raises(ManifestError, match=rf"^manifest {folder}: a folder, not a manifest file"):
        load_manifest(folder)
    with pytest.raises(ManifestError, match=rf"^manifest {loop}: a symlink loop \(it never reaches a file\)$"):
        load_manifest(loop)
    with pytest.raises(ManifestError, match=rf"^manifest {dangling}: a symlink to a missing file"):
        load_manifest(dangling)
    for manifest, problem in ((folder, "a folder"), (loop, "a symlink loop")):
        code = main(["features", "--manifest", str(manifest), "--cache", str(tmp_path / "cache"), "--profile", "tiny",
                     "--tiny-dir", str(Path(tiny_profile_cfg.marlin_path).parent)])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and problem in err and "Traceback" not in err, err
