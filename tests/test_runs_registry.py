"""The runs registry (SQLite, ordered named migrations) and run lookup."""

from __future__ import annotations

import sqlite3

import pytest

from tunesmith.errors import RunError
from tunesmith.runs import registry
from tunesmith.runs.layout import RunPaths, write_manifest
from tunesmith.runs.store import find_run, list_runs, register_run, remove_run


def _make_run(tmp_path, name, status="completed", created="2025-01-01T00:00:00"):
    paths = RunPaths(tmp_path / "runs" / name)
    paths.dir.mkdir(parents=True)
    manifest = {"name": name, "status": status, "base_model": "tiny", "base_model_path": "/x", "method": "lora",
                "best_val_loss": 1.5, "best_step": 4, "steps": 6, "created_at": created}
    write_manifest(paths, manifest)
    register_run(paths.dir, manifest)
    return paths


def test_migrations_from_empty_database(tmp_path):
    db = sqlite3.connect(str(tmp_path / "runs.db"))
    assert registry.migrate(db) == ["m001_create_runs", "m002_add_best_step_and_updated_at", "m003_index_created_at"]
    assert registry.migrate(db) == []  # recorded once
    cols = [r[1] for r in db.execute("PRAGMA table_info(runs)")]
    assert set(registry.COLUMNS) == set(cols)
    assert [r[0] for r in db.execute("SELECT name FROM _migrations ORDER BY rowid")] == [m.__name__ for m in registry.MIGRATIONS]


def test_migrations_continue_from_an_older_schema(tmp_path):
    db = sqlite3.connect(str(tmp_path / "runs.db"))
    db.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    registry.m001_create_runs(db)
    db.execute("INSERT INTO _migrations VALUES ('m001_create_runs', 'then')")
    db.execute("INSERT INTO runs (name, dir, status) VALUES ('old', '/nowhere', 'completed')")
    db.commit()
    assert registry.migrate(db) == ["m002_add_best_step_and_updated_at", "m003_index_created_at"]
    assert db.execute("SELECT name, best_step FROM runs").fetchall() == [("old", None)]


def test_a_migration_that_fails_half_way_leaves_nothing_and_is_retried(tmp_path, monkeypatch):
    def m004_two_columns(db):
        db.execute("ALTER TABLE runs ADD COLUMN tags TEXT")
        raise sqlite3.OperationalError("disk I/O error")  # as if the process died between the two steps

    def m004_two_columns_fixed(db):
        db.execute("ALTER TABLE runs ADD COLUMN tags TEXT")
        db.execute("ALTER TABLE runs ADD COLUMN notes TEXT")

    m004_two_columns_fixed.__name__ = "m004_two_columns"
    path = tmp_path / "runs.db"
    monkeypatch.setattr(registry, "MIGRATIONS", [*registry.MIGRATIONS, m004_two_columns])
    db = sqlite3.connect(str(path))
    with pytest.raises(sqlite3.OperationalError):
        registry.migrate(db)
    db.close()
    db = sqlite3.connect(str(path))  # a new process finds the schema as it was before m004
    assert "tags" not in [r[1] for r in db.execute("PRAGMA table_info(runs)")]
    assert "m004_two_columns" not in {r[0] for r in db.execute("SELECT name FROM _migrations")}
    monkeypatch.setattr(registry, "MIGRATIONS", [*registry.MIGRATIONS[:-1], m004_two_columns_fixed])
    assert registry.migrate(db) == ["m004_two_columns"]
    assert {"tags", "notes"} <= {r[1] for r in db.execute("PRAGMA table_info(runs)")}


def test_two_processes_migrating_at_once_apply_each_migration_once(tmp_path, monkeypatch):
    import threading

    started, release, calls = threading.Event(), threading.Event(), []

    def m004_add_tags(db):
        calls.append(threading.current_thread().name)
        if len(calls) == 1:  # the first one holds the write lock until the second is waiting
            started.set()
            release.wait(10)
        db.execute("ALTER TABLE runs ADD COLUMN tags TEXT")

    path = tmp_path / "runs.db"
    registry.migrate(sqlite3.connect(str(path)))
    monkeypatch.setattr(registry, "MIGRATIONS", [*registry.MIGRATIONS, m004_add_tags])
    results = {}

    def run(name):
        db = sqlite3.connect(str(path), timeout=10, check_same_thread=False)
        results[name] = registry.migrate(db)

    first = threading.Thread(target=run, args=("first",), name="first")
    first.start()
    assert started.wait(10)
    second = threading.Thread(target=run, args=("second",), name="second")
    second.start()
    second.join(0.5)  # it is now waiting for the write lock
    release.set()
    first.join(10), second.join(10)
    assert results == {"first": ["m004_add_tags"], "second": []} and calls == ["first"]


def test_find_list_remove(store_home, tmp_path):
    a = _make_run(tmp_path, "run-a", created="2025-01-01T00:00:00")
    _make_run(tmp_path, "run-b", created="2025-01-02T00:00:00")
    assert [r.name for r in list_runs()] == ["run-b", "run-a"]
    assert find_run("run-a").dir == a.dir.resolve()
    assert find_run(str(a.dir)).name == "run-a"
    assert find_run("run-a").to_dict()["best_val_loss"] == 1.5
    with pytest.raises(RunError, match="did you mean 'run-a'"):
        find_run("run-aa")
    remove_run("run-a")
    assert not a.dir.exists()
    assert [r.name for r in list_runs()] == ["run-b"]
    with pytest.raises(RunError, match="known runs: run-b"):
        find_run("zzz")


def test_running_run_is_not_removed_and_missing_folder_is_forgotten(store_home, tmp_path):
    import shutil

    _make_run(tmp_path, "busy", status="running")
    with pytest.raises(RunError, match="running"):
        remove_run("busy")
    gone = _make_run(tmp_path, "gone")
    shutil.rmtree(gone.dir)
    assert {r.name: r.status for r in list_runs()}["gone"] == "missing"
    with pytest.raises(RunError, match="folder .* is gone"):
        find_run("gone")
    remove_run("gone")
    assert [r.name for r in list_runs()] == ["busy"]


def test_load_tuned_without_final_is_a_clear_error(store_home, tmp_path):
    from tunesmith.runs.tuned import load_tuned

    _make_run(tmp_path, "unfinished", status="failed")
    with pytest.raises(RunError, match="has no final model"):
        load_tuned("unfinished")
