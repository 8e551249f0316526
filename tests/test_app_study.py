"""The listening study without a server: study file, seeded recorded order, SQLite store, blinding, results."""
import itertools
import os
import random
import sqlite3
import threading
from collections import Counter

import numpy as np
import pytest
import soundfile as sf
from app_support import CLIPS, SYSTEMS, make_study, parse_app_args

from expotion.app.results import bootstrap_ci, differences, summarise
from expotion.app.study import PAPER_QUESTIONS, StudyError, load_study, trial_order
from expotion.app.study_store import AlreadyAnswered, Response, StudyStore
from expotion.cli.main import main as cli_main

pytest.importorskip("gradio")
from expotion.app.study_tab import Finished, StudyRunner, TrialRemoved


@pytest.fixture
def study(tmp_path):
    return load_study(make_study(tmp_path))


def test_study_file_defaults_and_pairs(study, tmp_path):
    assert study.clips == CLIPS and set(study.systems) == set(SYSTEMS) and study.n_trials == 4
    assert study.questions == PAPER_QUESTIONS and study.scale == (1, 5)
    assert study.database == (tmp_path / "study.sqlite").resolve()
    assert study.captions["clip-b"] == "upbeat funk with slap bass"


def test_study_file_errors_name_the_problem(tmp_path):
    path = make_study(tmp_path)
    (tmp_path / "music_by_zebra_secret" / "clip-b.wav").unlink()
    with pytest.raises(StudyError, match="clip 'clip-b' lacks: system 'zebra_secret_system'"):
        load_study(_with(path, "clips: [clip-a, clip-b]\n"))
    assert load_study(path).clips == ("clip-a",)  # by default, only complete clips are used
    with pytest.raises(StudyError, match="'videos' is missing"):
        load_study(_write(tmp_path / "bad.yaml", "systems: {a: music_by_zebra_secret}\n"))
    with pytest.raises(StudyError, match="study file not found"):
        load_study(tmp_path / "nope.yaml")


def _write(path, text):
    path.write_text(text)
    return path


def _with(path, extra):
    return _write(path.with_name("extra.yaml"), path.read_text() + extra)


def test_trial_order_is_every_pair_keyed_by_participant(study):
    secret = StudyStore(study.database).order_secret()
    a1, a2 = trial_order(study, secret, "alice"), trial_order(study, secret, "alice")
    assert a1 == a2 and sorted(a1) == sorted((c, s) for c in CLIPS for s in SYSTEMS)
    orders = {tuple(trial_order(study, secret, f"p{i}")) for i in range(20)}
    assert len(orders) > 5  # participants get different orders


def orders_of(runner: StudyRunner, participants: list[str]) -> list[list[tuple[str, str]]]:
    return [[(t.clip, t.system) for t in runner.trials(p)] for p in participants]


def test_trial_orders_cannot_be_derived_from_the_page_and_differ_between_databases(tmp_path, caplog):
    """The participant id and the clip and system counts are on the page; with the code they must not give the order."""
    path = make_study(tmp_path)
    path.write_text(path.read_text() + "seed: 0\n")  # an older study file's seed no longer decides anything
    with caplog.at_level("WARNING", logger="expotion.app.study"):
        study = load_study(path)
    other = load_study(_with(path, "database: other.sqlite\n"))
    assert other.database != study.database
    people = [f"p-{i:02d}" for i in range(30)]
    first, second = orders_of(StudyRunner(study), people), orders_of(StudyRunner(other), people)
    pairs = [(c, s) for c in study.clips for s in sorted(study.systems)]

    def derived(who: str) -> list[tuple[str, str]]:  # how an order used to follow from the seed and the id
        order = list(pairs)
        random.Random(f"0:{who}").shuffle(order)
        return order

    assert sum(a != b for a, b in zip(first, second, strict=True)) >= 15  # 23 in 24 differ by chance alone
    assert sum(order == derived(who) for who, order in zip(people, first, strict=True)) <= 6
    with sqlite3.connect(study.database) as db:
        (secret,) = db.execute("SELECT value FROM meta WHERE key = 'order_secret'").fetchone()
    assert len(bytes.fromhex(secret)) == 32
    assert [trial_order(study, secret, who) for who in people] == first  # the kept secret reproduces every order
    reopened = StudyRunner(load_study(path))  # a restarted server: same orders for new participants too
    assert reopened.order_secret == secret
    assert trial_order(study, secret, "newcomer") == orders_of(reopened, ["newcomer"])[0]
    assert f"{path}: 'seed' is ignored" in caplog.text


def test_an_older_database_without_an_order_secret_gets_one_and_keeps_recorded_orders(study, caplog):
    """A study running when the secret was introduced: its participants resume their recorded orders."""
    store = StudyStore(study.database)
    old_order = [("clip-b", "zebra_secret_system"), ("clip-a", "quokka_hidden_system"),
                 ("clip-a", "zebra_secret_system"), ("clip-b", "quokka_hidden_system")]
    store.trials("early", old_order)
    with sqlite3.connect(study.database) as db:
        db.execute("DELETE FROM meta WHERE key = 'order_secret'")
    with caplog.at_level("WARNING", logger="expotion.app.study_store"):
        runner = StudyRunner(study)
    assert "made the trial-order secret now; the 1 participants already recorded keep their orders" in caplog.text
    assert orders_of(runner, ["early"]) == [old_order]
    assert len(bytes.fromhex(runner.order_secret)) == 32


def test_order_is_recorded_and_resumed(study):
    runner = StudyRunner(study)
    first = runner.next_trial("alice")
    assert (first.position, first.number, first.total) == (0, 1, 4) and first.video.suffix == ".mp4"
    second = runner.submit("alice", 0, {q.id: 4 for q in study.questions})
    assert second.position == 1
    with pytest.raises(AlreadyAnswered):
        runner.submit("alice", 0, {q.id: 1 for q in study.questions})
    resumed = StudyRunner(study)  # a restarted server
    assert resumed.next_trial("alice").position == 1
    with sqlite3.connect(study.database) as db:
        recorded = db.execute("SELECT clip, system FROM trials WHERE participant='alice' ORDER BY position").fetchall()
        rows = db.execute("SELECT participant, clip, system, question, score FROM responses").fetchall()
    assert recorded == trial_order(study, runner.order_secret, "alice")
    assert sorted(rows) == sorted(("alice", *recorded[0], q.id, 4) for q in study.questions)


def test_media_names_hide_the_system(study):
    runner = StudyRunner(study)
    view = runner.next_trial("alice")
    data = view.video.read_bytes()
    for name, directory in SYSTEMS.items():
        assert name not in str(view.video) and directory not in str(view.video)
        assert name.encode() not in data and directory.encode() not in data
    import av

    with av.open(str(view.video)) as c:
        assert c.streams.video and c.streams.audio
        assert float(c.streams.audio[0].duration * c.streams.audio[0].time_base) == pytest.approx(2.0, abs=0.1)


def dominant_frequency(samples: np.ndarray, sample_rate: int) -> float:
    return float(np.fft.rfftfreq(len(samples), 1 / sample_rate)[np.abs(np.fft.rfft(samples)).argmax()])


def media_frequency(path) -> float:
    """The dominant frequency of a media file's decoded audio."""
    import av

    with av.open(str(path)) as c:
        frames = [f.to_ndarray().mean(axis=0) for f in c.decode(audio=0)]
        rate = c.streams.audio[0].rate
    return dominant_frequency(np.concatenate(frames), rate)


def test_regenerated_music_gets_new_media_with_the_new_audio(study):
    """A system's wav regenerated after participants started (same length, even its old time stamp kept)."""
    runner = StudyRunner(study)
    first = runner.next_trial("alice")
    trial = runner.trials("alice")[first.position]
    wav = study.systems[trial.system][trial.clip]
    old, rate = sf.read(wav)
    stamp = wav.stat()
    t = np.arange(len(old)) / rate
    sf.write(wav, (0.3 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32), rate)
    os.utime(wav, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # as `cp -p` or `rsync -a` would leave it
    assert wav.stat().st_size == stamp.st_size and wav.stat().st_mtime_ns == stamp.st_mtime_ns

    again = StudyRunner(load_study(study.path)).next_trial("alice")  # the server restarted
    assert again.position == first.position and again.video != first.video
    assert media_frequency(again.video) == pytest.approx(1000, abs=10)
    assert media_frequency(first.video) == pytest.approx(dominant_frequency(old, rate), abs=10)  # kept, unchanged


def test_two_threads_submitting_at_once_lose_no_row(study):
    runner = StudyRunner(study)
    barrier = threading.Barrier(2)
    errors = []

    def participant(who: str) -> None:
        try:
            for position in range(study.n_trials):
                runner.next_trial(who)
                barrier.wait(timeout=30)  # both submit the same step at the same moment
                runner.submit(who, position, {q.id: 1 + (position + len(who)) % 5 for q in study.questions})
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)
            barrier.abort()

    threads = [threading.Thread(target=participant, args=(w,)) for w in ("ann", "bobby")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    rows = runner.store.responses()
    assert len(rows) == 2 * study.n_trials * len(study.questions)
    assert {(r.participant, r.clip, r.system) for r in rows} == {
        (w, c, s) for w in ("ann", "bobby") for c in CLIPS for s in SYSTEMS}


def test_bootstrap_ci_of_one_rating_per_participant_matches_the_normal_approximation():
    rng = np.random.default_rng(0)
    scores = rng.integers(1, 6, (400, 1)).astype(float)  # 400 participants, one rating each: independent
    low, high = bootstrap_ci(scores, 20000, np.random.default_rng(1), resample_clips=False)
    half = 1.96 * scores.std() / np.sqrt(len(scores))
    assert low == pytest.approx(scores.mean() - half, abs=0.02)
    assert high == pytest.approx(scores.mean() + half, abs=0.02)
    assert bootstrap_ci(np.full((5, 3), 3.0), 100, np.random.default_rng(0)) == (3.0, 3.0)
    one_participant = bootstrap_ci(np.array([[3.0, 4.0, 5.0]]), 100, np.random.default_rng(0))
    one_clip = bootstrap_ci(np.array([[3.0], [4.0], [5.0]]), 100, np.random.default_rng(0))
    assert np.isnan(one_participant).all() and np.isnan(one_clip).all()  # undefined, not a zero-width interval


def simulated_study(rng: np.random.Generator, participants: int = 12, clips: int = 6) -> tuple[np.ndarray, float]:
    """Every participant rates every clip: mean 3 + rater level (sd 0.8) + clip level (sd 0.5) + noise (sd 0.7).

    Returns the ratings and the mean over these clips (the population mean is 3).
    """
    clip_level = 0.5 * rng.standard_normal(clips)
    rater_level = 0.8 * rng.standard_normal((participants, 1))
    grid = 3 + rater_level + clip_level + 0.7 * rng.standard_normal((participants, clips))
    return grid, 3 + clip_level.mean()


def test_bootstrap_ci_covers_the_mean_when_ratings_share_participants_and_clips():
    rng = np.random.default_rng(0)
    studies, hits = 300, Counter()
    for _ in range(studies):
        grid, these_clips = simulated_study(rng)
        low, high = bootstrap_ci(grid, 500, rng)
        hits["two-way"] += low <= 3 <= high
        low, high = bootstrap_ci(grid, 500, rng, resample_clips=False)
        hits["fixed clips"] += low <= these_clips <= high
        low, high = bootstrap_ci(grid.reshape(-1, 1), 500, rng, resample_clips=False)  # every rating on its own
        hits["independent"] += low <= 3 <= high
    coverage = {k: v / studies for k, v in hits.items()}
    assert 0.85 <= coverage["two-way"] <= 0.99 and 0.85 <= coverage["fixed clips"] <= 0.99, coverage
    assert coverage["independent"] < 0.7, coverage  # resampling single ratings: far too narrow


def test_paired_difference_removes_each_participants_level(study):
    """Raters differ by up to three points; on the same clip zebra gets one point more than quokka half the time."""
    rng = np.random.default_rng(3)
    level = {f"p{i:02d}": int(rng.integers(1, 4)) for i in range(15)}
    responses = []
    for p, clip in itertools.product(level, CLIPS):
        quokka = level[p] + int(rng.integers(0, 2))
        zebra = quokka + int(rng.random() < 0.5)
        responses += [Response(p, clip, "quokka_hidden_system", "musicality", quokka, ""),
                      Response(p, clip, "zebra_secret_system", "musicality", zebra, "")]
    diff = differences(study, responses, 2000)[0]
    quokka, zebra = (r.estimate for r in summarise(study, responses, 2000) if r.question == "musicality")
    assert (diff.system, diff.other, diff.question) == ("quokka_hidden_system", "zebra_secret_system", "musicality")
    assert (diff.estimate.participants, diff.estimate.n) == (15, 30)
    assert diff.estimate.mean == pytest.approx(quokka.mean - zebra.mean)
    assert diff.estimate.ci_low < diff.estimate.mean < diff.estimate.ci_high < 0  # zebra is rated higher
    assert quokka.ci_high > zebra.ci_low  # the two systems' own CIs overlap: only the pairing separates them


def test_results_command_writes_table_csv_and_figure(study, capsys):
    runner = StudyRunner(study)
    for who in ("ann", "bob"):
        for position in range(study.n_trials):
            trial = runner.trials(who)[position]
            score = 5 if trial.system == "zebra_secret_system" else 2 + (who == "bob")
            runner.submit(who, position, {q.id: score for q in study.questions})
    assert runner.next_trial("ann") == Finished(4)  # every trial answered: the page thanks them
    assert cli_main(["study", "results", str(study.path), "--resamples", "500"]) == 0
    out = capsys.readouterr().out
    assert "2 participants, 2 clips" in out and "over participants and clips" in out and "zebra_secret_system" in out
    results = study.database.parent / "study-results"
    lines = (results / "results.csv").read_text().splitlines()
    assert lines[0] == "system,question,participants,clips,n,mean,ci95_low,ci95_high" and len(lines) == 1 + 2 * 4
    assert "quokka_hidden_system,musicality,2,2,4,2.5000,2.0000,3.0000" in lines
    assert "zebra_secret_system,musicality,2,2,4,5.0000,5.0000,5.0000" in lines
    paired = (results / "differences.csv").read_text().splitlines()
    assert paired[0] == "system,minus,question,participants,clips,n,mean_difference,ci95_low,ci95_high"
    assert "quokka_hidden_system,zebra_secret_system,creativity,2,2,4,-2.5000,-3.0000,-2.0000" in paired
    assert len(paired) == 1 + 4
    assert (results / "ratings.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = summarise(study, runner.store.responses(), 200)
    assert [(r.system, r.question) for r in rows][:2] == [("quokka_hidden_system", "musicality"),
                                                          ("quokka_hidden_system", "text_music")]


def test_results_with_one_participant_report_the_ci_as_undefined(study, capsys):
    runner = StudyRunner(study)
    runner.submit("solo", 0, {q.id: 3 for q in study.questions})
    assert cli_main(["study", "results", str(study.path), "--resamples", "100"]) == 0
    out = capsys.readouterr().out
    assert "1 participants" in out and "undefined: 1 participant" in out and "[3.00, 3.00]" not in out
    lines = (study.database.parent / "study-results" / "results.csv").read_text().splitlines()
    assert sum(line.endswith(",1,1,1,3.0000,nan,nan") for line in lines) == 4  # the rated system, every question


def test_browser_secret_is_kept_across_restarts_and_is_not_the_blinding_secret(study, tmp_path):
    """The browser's stored id must still decrypt after a restart, and the key sent to pages must not name media."""
    import gradio as gr

    from expotion.app.server import build_app

    def built() -> tuple[str, str]:
        page, _ = build_app(parse_app_args(["--study", str(study.path), "--study-only", "--runs", str(tmp_path),
                                            "--outputs", str(tmp_path / "out"),
                                            "--demo-manifest", str(tmp_path / "none.csv")]))
        (state,) = [b for b in page.blocks.values() if isinstance(b, gr.BrowserState)]
        return state.secret, str(page.get_config_file())  # what every page is sent

    (first, config), (second, _) = built(), built()
    blinding = StudyStore(study.database).secret()
    assert first == second and len(first) == 32
    assert first in config and blinding not in config and blinding != first


def test_a_system_removed_mid_study_is_skipped_for_returning_participants_and_left_out_of_results(
        study, capsys, caplog):
    """The researcher drops a system after ann has rated some of its trials: she must finish the rest.

    Trial orders come from the database's random secret, so "ann" is the first participant id whose order opens
    with a quokka trial then a zebra one (one in three ids does).
    """
    runner = StudyRunner(study)
    ann, order = next((who, order) for who in (f"ann-{i}" for i in range(200)) for order in [runner.trials(who)]
                      if [t.system for t in order[:2]] == ["quokka_hidden_system", "zebra_secret_system"])
    zebra = [t.position for t in order if t.system == "zebra_secret_system"]
    for position in range(zebra[0] + 1):  # up to and including her first zebra trial; one zebra trial is left
        runner.submit(ann, position, {q.id: 4 for q in study.questions})
    study.path.write_text("\n".join(line for line in study.path.read_text().splitlines()
                                    if "zebra" not in line) + "\n")
    runner = StudyRunner(load_study(study.path))  # the server restarted with the new study file
    quokka = [t.position for t in order if t.system == "quokka_hidden_system"]
    answered = sum(p < zebra[0] for p in quokka)
    with caplog.at_level("INFO", logger="expotion.app.study_tab"):
        view = runner.next_trial(ann)
    assert f"participant '{ann}': skipping 2 recorded trials" in caplog.text
    assert (view.position, view.number, view.total) == (quokka[answered], answered + 1, 2)
    with pytest.raises(TrialRemoved, match=f"trial {zebra[1] + 1} is no longer part of the study"):
        runner.submit(ann, zebra[1], {q.id: 1 for q in study.questions})
    while not isinstance(view, Finished):
        view = runner.submit(ann, view.position, {q.id: 2 for q in study.questions})
    assert view == Finished(2)  # her own count, not the study's
    assert runner.next_trial("bob").total == 2  # a new participant gets the current pairs only

    assert cli_main(["study", "results", str(study.path), "--resamples", "100"]) == 0
    out = capsys.readouterr().out
    assert "left out 4 stored ratings no longer in the study file: 4 of system 'zebra_secret_system'" in out
    lines = (study.database.parent / "study-results" / "results.csv").read_text().splitlines()
    assert [line.split(",")[:2] for line in lines[1:]] == [["quokka_hidden_system", q.id] for q in study.questions]


def rate_everything(study, runner: StudyRunner, who: str, score: int) -> None:
    for position in range(study.n_trials):
        runner.submit(who, position, {q.id: score for q in study.questions})


def test_results_refuse_scores_outside_the_scale_naming_them(study, capsys):
    runner = StudyRunner(study)
    rate_everything(study, runner, "ann", 4)
    rate_everything(study, runner, "bob", 2)
    with sqlite3.connect(study.database) as db:
        db.execute("UPDATE responses SET score = 99 WHERE participant = 'bob' AND position = 1 "
                   "AND question = 'musicality'")
        db.execute("UPDATE responses SET score = 2.5 WHERE participant = 'ann' AND position = 3 "
                   "AND question = 'creativity'")
    assert cli_main(["study", "results", str(study.path), "--resamples", "100"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: {study.database}: 2 stored scores are not whole numbers in the study's scale 1–5 "
                          "(participant 'ann' trial 4 creativity=2.5; participant 'bob' trial 2 musicality=99); "
                          "refusing to average them")
    assert not (study.database.parent / "study-results").exists()


def integrity_failure(path) -> None:
    """A study database whose index no longer matches its table: readable, but PRAGMA integrity_check fails."""
    with sqlite3.connect(path) as db:
        db.execute("CREATE INDEX by_score ON responses(score)")
        db.execute("PRAGMA writable_schema = ON")
        db.execute("UPDATE sqlite_master SET sql = 'CREATE INDEX by_score ON responses(clip)' "
                   "WHERE name = 'by_score'")
    db.close()


@pytest.mark.parametrize("case, expected", [
    ("missing", "no responses database yet"),
    ("zero bytes", "the file is empty (0 bytes), not a study database"),
    ("random bytes", "not an SQLite database (it does not start with SQLite's header)"),
    ("another database", "not a study database: it has no 'meta' table"),
    ("fails integrity check", "fails SQLite's integrity check ("),
])
def test_results_check_the_database_and_never_create_or_change_it(study, capsys, case, expected):
    database = study.database
    if case == "zero bytes":
        database.write_bytes(b"")
    elif case == "random bytes":
        database.write_bytes(np.random.default_rng(0).integers(0, 256, 8192, dtype=np.uint8).tobytes())
    elif case == "another database":
        with sqlite3.connect(database) as db:
            db.execute("CREATE TABLE photos (name TEXT)")
        db.close()
    elif case == "fails integrity check":
        rate_everything(study, StudyRunner(study), "ann", 3)
        integrity_failure(database)
        with sqlite3.connect(database) as db:
            assert len(db.execute("SELECT * FROM responses").fetchall()) == 16  # every row still reads
        db.close()
    before = database.read_bytes() if database.exists() else None
    assert cli_main(["study", "results", str(study.path), "--resamples", "100"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"error: {database}: {expected}")
    assert (database.read_bytes() if database.exists() else None) == before  # never created, never changed
    assert not (database.parent / "study-results").exists()


def test_the_app_refuses_a_database_that_is_not_sqlite_in_one_line(study, tmp_path, capsys):
    junk = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    study.database.write_bytes(junk)
    assert cli_main(["app", "--study", str(study.path), "--study-only", "--runs", str(tmp_path),
                     "--outputs", str(tmp_path / "out"), "--demo-manifest", str(tmp_path / "none.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {study.database}: cannot be used as the study database (")
    assert len(err.strip().splitlines()) == 1 and study.database.read_bytes() == junk
