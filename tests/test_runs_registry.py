"""The runs registry (SQLite, ordered named migrations) and run lookup."""

from __future__ import annotations

import json
import os
import sqlite3

import pytest

from tunesmith.errors import RunError
from tunesmith.runs import registry
from tunesmith.runs.layout import RunPaths, write_manifest
from tunesmith.runs.store import find_run, list_runs, register_run, remove_run


def _make_run(tmp_path, name, status="completed", created="2025-01-01T00:00:00", register=True, marked=True):
    """A run folder as training leaves it (config.yaml, manifest.json, data/, final/), registered unless told."""
    paths = RunPaths(tmp_path / "runs" / name)
    (paths.dir / "data").mkdir(parents=True)
    (paths.dir / "final").mkdir()
    paths.config.write_text("train:\n  lr: 0.001\n")
    manifest = {"name": name, "status": status, "base_model": "tiny", "base_model_path": "/x", "method": "lora",
                "best_val_loss": 1.5, "best_step": 4, "steps": 6, "created_at": created}
    if marked:
        write_manifest(paths, manifest)
    else:  # as a tunesmith older than the marker wrote it
        paths.manifest.write_text(json.dumps(manifest))
    if register:
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


def test_load_run_without_final_is_a_clear_error(store_home, tmp_path):
    from tunesmith.runs.deliverable import load_run

    _make_run(tmp_path, "unfinished", status="failed")
    with pytest.raises(RunError, match="has no final model"):
        load_run("unfinished")


def _web_app(folder):
    """A folder that is not a run but holds a manifest.json (a web app's)."""
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text('{"name": "web", "start_url": "/"}')
    (folder / "index.html").write_text("<h1>mine</h1>")
    return folder


def test_rm_takes_a_name_before_a_folder_and_a_folder_only_in_path_form(store_home, tmp_path, monkeypatch):
    """Issue 12: `runs rm web` deleted ./web, a web app with a manifest.json, instead of the run named web."""
    run = _make_run(tmp_path, "web")
    cwd = tmp_path / "cwd"
    app = _web_app(cwd / "web")
    _web_app(cwd / "site")
    monkeypatch.chdir(cwd)
    assert find_run("web").dir == run.dir.resolve()  # the registered run, not ./web
    remove_run("web")
    assert not run.dir.exists() and sorted(p.name for p in app.iterdir()) == ["index.html", "manifest.json"]
    with pytest.raises(RunError, match="unknown run 'site' .*write it as a path: `tunesmith runs rm ./site`"):
        remove_run("site")
    for spec in ("./site", str(cwd / "site"), "web/"):
        with pytest.raises(RunError, match="is not a run tunesmith made .*nothing was removed"):
            remove_run(spec)
    assert (cwd / "site" / "index.html").is_file() and (cwd / "web" / "index.html").is_file()


def test_rm_deletes_only_a_folder_that_holds_what_tunesmith_wrote(store_home, tmp_path):
    run = _make_run(tmp_path, "r")
    (run.dir / "notes.txt").write_text("my notes")
    (run.dir / "exports").mkdir()
    with pytest.raises(RunError, match=r"holds what tunesmith did not put there: exports, notes.txt; nothing was removed"):
        remove_run("r")
    assert (run.dir / "notes.txt").read_text() == "my notes" and find_run("r").dir == run.dir.resolve()
    (run.dir / "notes.txt").unlink()
    (run.dir / "exports").rmdir()
    (run.dir / ".final.k9x2.tmp").mkdir()  # what a kill while writing final/ leaves
    (run.dir / ".manifest.json.a1b2.tmp").write_text("{")
    remove_run("r")
    assert not run.dir.exists()
    no_config = _make_run(tmp_path, "no-config")
    no_config.config.unlink()
    with pytest.raises(RunError, match=r"\(config.yaml is missing\); nothing was removed"):
        remove_run("no-config")


def test_rm_by_path_needs_the_marker_unless_the_run_is_registered(store_home, tmp_path):
    old = _make_run(tmp_path, "old", marked=False)  # registered, made before the marker: tunesmith's
    remove_run("old")
    older = _make_run(tmp_path, "older", marked=False)
    remove_run(f"{older.dir}/")  # by path too
    assert not old.dir.exists() and not older.dir.exists() and list_runs() == []
    stray = _make_run(tmp_path, "stray", register=False, marked=False)
    with pytest.raises(RunError, match="is not a run tunesmith made"):
        remove_run(str(stray.dir))
    elsewhere = _make_run(tmp_path / "b", "twin")  # registered under the name the unregistered copy carries
    copy = _make_run(tmp_path, "twin", register=False)
    remove_run(str(copy.dir))
    assert not copy.dir.exists() and find_run("twin").dir == elsewhere.dir.resolve()  # the other entry is kept


def test_rm_refuses_a_run_in_training_and_removes_a_crashed_one(store_home, tmp_path):
    from tunesmith.runs import lock

    run = _make_run(tmp_path, "live", status="running")
    with lock.hold(run):  # a training process holds it
        with pytest.raises(RunError, match=rf"run 'live' is in use by pid {os.getpid()} .*train.lock"):
            remove_run("live")
        assert run.dir.is_dir()
    remove_run("live")  # still marked running, but no process holds the lock: it was killed
    assert not run.dir.exists() and list_runs() == []
