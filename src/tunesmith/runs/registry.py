"""The runs registry: a SQLite index at $TUNESMITH_HOME/runs.db with ordered, named migrations.

The run folders are the truth; the registry is an index over them, so `runs list` is fast and a run
can be found by name from any working directory. Each migration is a named function applied once,
in order, and recorded in the `_migrations` table.
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
    """Apply the migrations not yet recorded, in order; return the names applied now."""
    db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    done = {row[0] for row in db.execute("SELECT name FROM _migrations")}
    applied = []
    for migration in MIGRATIONS:
        if migration.__name__ in done:
            continue
        with db:  # one transaction per migration: it is applied and recorded together, or not at all
            migration(db)
            db.execute("INSERT INTO _migrations VALUES (?, ?)", (migration.__name__, _now()))
        applied.append(migration.__name__)
    return applied


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
