"""The runs registry: a SQLite index at $TUNESMITH_HOME/runs.db with ordered, named migrations.

The run folders are the truth; the registry is an index over them, so `runs list` is fast and a run
can be found by name from any working directory. Each migration is a named function applied once,
in order, and recorded in the `_migrations` table in the same transaction.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from tunesmith.errors import RunError
from tunesmith.io import json_text
from tunesmith.models.store import home

COLUMNS = ("name", "dir", "status", "base_model", "method", "best_val_loss", "best_step", "steps",
           "created_at", "updated_at", "manifest")


def m001_create_runs(db: sqlite3.Connection) -> None:
    db.execute("""CREATE TABLE runs (
        name TEXT PRIMARY KEY,
        dir TEXT NOT NULL,
        status TEXT NOT NULL,
        base_model TEXT,
        method TEXT,
        best_val_loss REAL,
        steps INTEGER,
        created_at TEXT,
        manifest TEXT
    )""")


def m002_add_best_step_and_updated_at(db: sqlite3.Connection) -> None:
    db.execute("ALTER TABLE runs ADD COLUMN best_step INTEGER")
    db.execute("ALTER TABLE runs ADD COLUMN updated_at TEXT")


def m003_index_created_at(db: sqlite3.Connection) -> None:
    db.execute("CREATE INDEX runs_created_at ON runs (created_at)")


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    m001_create_runs,
    m002_add_best_step_and_updated_at,
    m003_index_created_at,
]


def db_path() -> Path:
    return home() / "runs.db"


def migrate(db: sqlite3.Connection) -> list[str]:
    """Apply the migrations not yet recorded, in order; return the names applied now.

    Each migration and its record in `_migrations` are one transaction: a migration that fails
    half-way (an error, a killed process) leaves the schema as it was, and is tried again next
    time. BEGIN IMMEDIATE takes the write lock first, so of two processes migrating at once the
    second waits, then finds the migration recorded and skips it.
    """
    with _explicit_transactions(db):
        db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
        applied = []
        for migration in MIGRATIONS:
            if _apply_once(db, migration):
                applied.append(migration.__name__)
    return applied


def _apply_once(db: sqlite3.Connection, migration: Callable[[sqlite3.Connection], None]) -> bool:
    """Apply `migration` and record it in one transaction, unless it is recorded already."""
    name = migration.__name__
    if db.execute("SELECT 1 FROM _migrations WHERE name = ?", (name,)).fetchone():
        return False
    db.execute("BEGIN IMMEDIATE")
    try:
        if db.execute("SELECT 1 FROM _migrations WHERE name = ?", (name,)).fetchone():
            db.execute("COMMIT")  # another process applied it while this one waited for the lock
            return False
        migration(db)
        db.execute("INSERT INTO _migrations VALUES (?, ?)", (name, _now()))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return True


@contextlib.contextmanager
def _explicit_transactions(db: sqlite3.Connection) -> Iterator[None]:
    """Turn off the sqlite3 module's implicit transactions for a while (and commit what is pending).

    Python 3.11's sqlite3 opens a transaction only before INSERT/UPDATE/DELETE, so DDL such as
    ALTER TABLE runs in autocommit mode even inside `with db:`; with isolation_level None, the
    BEGIN and COMMIT written out above are the only transaction boundaries.
    """
    previous = db.isolation_level
    db.isolation_level = None
    try:
        yield
    finally:
        db.isolation_level = previous


@contextlib.contextmanager
def connect(path: Path | None = None) -> Iterator[sqlite3.Connection]:
    """An open, migrated connection to the registry."""
    path = path or db_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        db = sqlite3.connect(str(path), timeout=30)
    except sqlite3.Error as e:
        raise RunError(f"runs registry {path} cannot be opened ({e})") from None
    try:
        db.row_factory = sqlite3.Row
        migrate(db)
        yield db
    except sqlite3.DatabaseError as e:
        raise RunError(f"runs registry {path} is damaged ({e})",
                       "move it aside; run folders are untouched and `tunesmith runs list` rebuilds from new runs") from None
    finally:
        db.close()


def record(name: str, run_dir: Path, manifest: dict[str, Any]) -> None:
    """Insert or update a run's row from its manifest."""
    row = (name, str(run_dir), manifest.get("status"), manifest.get("base_model"), manifest.get("method"),
           manifest.get("best_val_loss"), manifest.get("best_step"), manifest.get("steps"),
           manifest.get("created_at"), _now(), json_text(manifest, default=str))
    with connect() as db, db:
        db.execute(f"INSERT OR REPLACE INTO runs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})", row)


def rows() -> list[dict[str, Any]]:
    """Every recorded run, newest first."""
    with connect() as db:
        return [dict(r) for r in db.execute("SELECT * FROM runs ORDER BY created_at DESC, name DESC")]


def get(name: str) -> dict[str, Any] | None:
    with connect() as db:
        r = db.execute("SELECT * FROM runs WHERE name = ?", (name,)).fetchone()
        return dict(r) if r else None


def delete(name: str) -> None:
    with connect() as db, db:
        db.execute("DELETE FROM runs WHERE name = ?", (name,))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")
