"""SQLite storage for a listening study: participants, their trial order, and one row per answer.

Each submitted trial is written in one transaction, so a closed tab loses at most the trial on
screen, and two participants submitting at once never lose a row (SQLite serialises writers; each
call opens its own connection, so any thread may call any method).
"""
from __future__ import annotations

import logging
import secrets
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS participants (participant TEXT PRIMARY KEY, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trials (
    participant TEXT NOT NULL REFERENCES participants(participant),
    position INTEGER NOT NULL,
    clip TEXT NOT NULL,
    system TEXT NOT NULL,
    PRIMARY KEY (participant, position)
);
CREATE TABLE IF NOT EXISTS responses (
    participant TEXT NOT NULL,
    clip TEXT NOT NULL,
    system TEXT NOT NULL,
    question TEXT NOT NULL,
    score INTEGER NOT NULL,
    answered_at TEXT NOT NULL,
    position INTEGER NOT NULL,
    UNIQUE (participant, position, question)
);
"""


RESPONSES_QUERY = ("SELECT participant, clip, system, question, score, answered_at FROM responses "
                   "ORDER BY participant, position, question")
COLUMNS = {"meta": {"key", "value"}, "participants": {"participant", "created_at"},
           "trials": {"participant", "position", "clip", "system"},
           "responses": {"participant", "clip", "system", "question", "score", "answered_at", "position"}}
SQLITE_HEADER = b"SQLite format 3\x00"
SHOWN_PROBLEMS = 5  # bad scores named in the one-line report; the count covers them all


class DatabaseProblem(ValueError):
    """A responses database that cannot be trusted as it is; the message names the file and the problem."""


@dataclass(frozen=True)
class Trial:
    position: int  # 0-based place in the participant's order
    clip: str
    system: str


@dataclass(frozen=True)
class Response:
    participant: str
    clip: str
    system: str
    question: str
    score: int
    answered_at: str


class AlreadyAnswered(RuntimeError):
    """The trial was submitted before (a double click, or a second tab)."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class StudyStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=30.0)
        try:
            db.execute("PRAGMA journal_mode=WAL")  # readers never wait for a writer
            db.executescript(SCHEMA)
        except sqlite3.DatabaseError as err:
            raise DatabaseProblem(f"{self.path}: cannot be used as the study database ({err})") from None
        finally:
            db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction on a fresh connection: committed as a whole or not at all."""
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    def kept_secret(self, key: str, nbytes: int = 16) -> str:
        """A random key (hex) made once per study database under ``key`` in ``meta``, the same after every restart."""
        with self.transaction() as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            if row:
                return row[0]
            value = secrets.token_bytes(nbytes).hex()
            db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, value))
            earlier = db.execute("SELECT COUNT(*) FROM participants").fetchone()[0]
        if key == "order_secret" and earlier:
            log.warning("%s: made the trial-order secret now; the %d participants already recorded keep their "
                        "orders, which an older version derived from the study seed", self.path, earlier)
        return value

    def secret(self) -> str:
        """The key that names the blinded media files; it never leaves the server."""
        return self.kept_secret("secret")

    def order_secret(self) -> str:
        """The key that shuffles trial orders (256 bits); it never leaves the server.

        A database made before this key existed gets one on first open. Participants already
        recorded keep their recorded orders (so they can resume); everyone after gets orders that
        cannot be derived from the page.
        """
        return self.kept_secret("order_secret", 32)

    def browser_secret(self) -> str:
        """The key the browser encrypts the remembered participant id with. Gradio sends it to every
        page, so it must not be the blinding key; kept so a restarted server still reads stored ids."""
        return self.kept_secret("browser_secret")

    def trials(self, participant: str, order: Sequence[tuple[str, str]] | None = None) -> list[Trial]:
        """The participant's recorded trial order; ``order`` is recorded first if they are new."""
        with self.transaction() as db:
            rows = db.execute("SELECT position, clip, system FROM trials WHERE participant = ? ORDER BY position",
                              (participant,)).fetchall()
            if not rows and order is not None:
                db.execute("INSERT INTO participants (participant, created_at) VALUES (?, ?)", (participant, now()))
                rows = [(i, clip, system) for i, (clip, system) in enumerate(order)]
                db.executemany("INSERT INTO trials (participant, position, clip, system) VALUES (?, ?, ?, ?)",
                               [(participant, *row) for row in rows])
        return [Trial(*row) for row in rows]

    def answered_positions(self, participant: str) -> set[int]:
        with self.transaction() as db:
            rows = db.execute("SELECT DISTINCT position FROM responses WHERE participant = ?", (participant,))
            return {r[0] for r in rows}

    def submit(self, participant: str, trial: Trial, scores: dict[str, int]) -> None:
        """Every answer of one trial, in one transaction; a trial is accepted once."""
        stamp = now()
        with self.transaction() as db:
            done = db.execute("SELECT 1 FROM responses WHERE participant = ? AND position = ? LIMIT 1",
                              (participant, trial.position)).fetchone()
            if done:
                raise AlreadyAnswered(f"trial {trial.position + 1} was already submitted")
            db.executemany(
                "INSERT INTO responses (participant, clip, system, question, score, answered_at, position) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(participant, trial.clip, trial.system, q, int(s), stamp, trial.position) for q, s in scores.items()])

    def responses(self) -> list[Response]:
        with self.transaction() as db:
            rows = db.execute(RESPONSES_QUERY).fetchall()
        return [Response(*row) for row in rows]


def checked_responses(path: Path, scale: tuple[int, int]) -> list[Response]:
    """Every stored response of a study database that passes SQLite's integrity check, has the study
    schema and holds only whole scores on ``scale``; otherwise ``DatabaseProblem``.

    Opened read-only, so a missing, empty or foreign file is never turned into a database.
    """
    path = Path(path)
    if not path.is_file():
        raise DatabaseProblem(f"{path}: no responses database yet (the study app makes it)")
    with path.open("rb") as f:
        header = f.read(len(SQLITE_HEADER))
    if not header:
        raise DatabaseProblem(f"{path}: the file is empty (0 bytes), not a study database")
    if header != SQLITE_HEADER:
        raise DatabaseProblem(f"{path}: not an SQLite database (it does not start with SQLite's header)")
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            check_integrity(db, path)
            check_schema(db, path)
            check_scores(db, path, scale)
            rows = db.execute(RESPONSES_QUERY).fetchall()
        finally:
            db.close()
    except sqlite3.DatabaseError as err:
        raise DatabaseProblem(f"{path}: cannot be read as an SQLite database ({err})") from None
    return [Response(*row) for row in rows]


def check_integrity(db: sqlite3.Connection, path: Path) -> None:
    problems = [row[0] for row in db.execute("PRAGMA integrity_check")]
    if problems != ["ok"]:
        raise DatabaseProblem(f"{path}: fails SQLite's integrity check ({len(problems)} problems, first: "
                              f"{problems[0]}); restore it from a backup")


def check_schema(db: sqlite3.Connection, path: Path) -> None:
    for table, wanted in COLUMNS.items():
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if not have:
            raise DatabaseProblem(f"{path}: not a study database: it has no '{table}' table")
        if missing := sorted(wanted - have):
            raise DatabaseProblem(f"{path}: not a study database: table '{table}' lacks {', '.join(missing)}")


def check_scores(db: sqlite3.Connection, path: Path, scale: tuple[int, int]) -> None:
    """Refuse every score that is not a whole number on the study's scale: averaging it would be wrong."""
    low, high = scale
    bad = db.execute("SELECT participant, position, question, score FROM responses "
                     "WHERE typeof(score) != 'integer' OR score < ? OR score > ? "
                     "ORDER BY participant, position, question", (low, high)).fetchall()
    if bad:
        named = "; ".join(f"participant '{p}' trial {position + 1} {question}={score!r}"
                          for p, position, question, score in bad[:SHOWN_PROBLEMS])
        more = f"; and {len(bad) - SHOWN_PROBLEMS} more" if len(bad) > SHOWN_PROBLEMS else ""
        raise DatabaseProblem(f"{path}: {len(bad)} stored scores are not whole numbers in the study's scale "
                              f"{low}–{high} ({named}{more}); refusing to average them")
