import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ctxdistill import migrations, workspace
from ctxdistill.store import ConflictError, NotFound, SampleFilter, Store, StoreError, workspace_home


@pytest.fixture
def prompts(store):
    store.add_prompts(
        "demo",
        [
            {"text": "How do I boil an egg?", "category": "cooking"},
            {"text": "Tell me about ships."},
            {"text": "What is rust?", "split": "heldout"},
        ],
        source="test",
    )
    return store.get_prompts("demo")


# ---------------------------------------------------------------- workspace and migrations


def test_workspace_home_layout(tmp_path, monkeypatch):
    home = workspace_home(tmp_path / "a")
    assert (home / "runs").is_dir() and (home / "models").is_dir()
    monkeypatch.setenv("CTXDISTILL_HOME", str(tmp_path / "b"))
    assert workspace_home() == (tmp_path / "b").resolve()
    s = Store()
    assert s.home == (tmp_path / "b").resolve() and s.runs_dir == s.home / "runs"
    assert (s.home / "ctxdistill.db").exists()
    s.close()


def test_migrations_fresh_and_reopen(tmp_path):
    s = Store(tmp_path)
    cid = s.save_constitution("c", {"principles": []}, "h")
    s.close()
    db = sqlite3.connect(tmp_path / "ctxdistill.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(migrations.MIGRATIONS)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    s = Store(tmp_path)  # already migrated: nothing re-run, data intact
    assert s.get_constitution(cid)["name"] == "c"
    assert s.integrity_ok()
    s.close()


def test_new_migration_applies_once(tmp_path, monkeypatch):
    Store(tmp_path).close()
    calls = []

    def _m_extra(db):
        calls.append(1)
        db.execute("CREATE TABLE extra (x INTEGER)")

    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS + [_m_extra])
    Store(tmp_path).close()
    Store(tmp_path).close()
    assert calls == [1]
    db = sqlite3.connect(tmp_path / "ctxdistill.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(migrations.MIGRATIONS)
    db.close()


def test_pairs_made_before_the_instructions_source_survive_its_migration(tmp_path, monkeypatch):
    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:4])  # a workspace of the pairs' first table
    s = Store(tmp_path)
    cid = s.save_constitution("c", {"principles": []}, "h")
    s.add_pairs([{"constitution_id": cid, "prompt": "p", "chosen": "a", "rejected": "b", "source": "checks"}])
    s.close()
    monkeypatch.undo()
    s = Store(tmp_path)
    item = {"constitution_id": cid, "prompt": "p", "chosen": "a, cheers.", "rejected": "a", "source": "instructions"}
    assert s.add_pairs([item]) == 1
    assert [p["source"] for p in s.list_pairs(constitution_id=cid)] == ["checks", "instructions"]
    assert s.list_pairs(constitution_id=cid, source="checks")[0]["chosen"] == "a" and s.integrity_ok()
    db = sqlite3.connect(tmp_path / "ctxdistill.db")
    indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'pairs'")}
    assert {"pairs_unique", "pairs_by_constitution"} <= indexes
    db.close()
    s.close()


def test_failed_migration_rolls_back(tmp_path, monkeypatch):
    Store(tmp_path).close()

    def _m_broken(db):
        db.execute("CREATE TABLE half (x INTEGER)")
        raise RuntimeError("bad migration")

    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS + [_m_broken])
    with pytest.raises(RuntimeError):
        Store(tmp_path)
    db = sqlite3.connect(tmp_path / "ctxdistill.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(migrations.MIGRATIONS) - 1
    assert not db.execute("SELECT name FROM sqlite_master WHERE name = 'half'").fetchall()
    db.close()


# ---------------------------------------------------------------- constitutions


def test_constitution_versions_and_dedupe(store):
    v1 = store.save_constitution("pirate", {"principles": ["arr"]}, "h1", message="first")
    assert store.save_constitution("pirate", {"principles": ["arr"]}, "h1") == v1
    v2 = store.save_constitution("pirate", {"principles": ["arr", "matey"]}, "h2")
    v3 = store.save_constitution("pirate", {"principles": ["arr"]}, "h1")  # back to v1's text
    assert len({v1, v2, v3}) == 3
    assert store.get_constitution(v2)["parent_id"] == v1
    assert store.get_constitution(v1)["content"] == {"principles": ["arr"]}
    assert [v["id"] for v in store.list_constitution_versions("pirate")] == [v3, v2, v1]
    store.save_constitution("helper", {}, "h9")
    assert sorted({v["name"] for v in store.list_constitution_versions()}) == ["helper", "pirate"]
    with pytest.raises(NotFound):
        store.get_constitution(999)


def test_owner_isolation(store):
    store.save_constitution("mine", {}, "h", owner="alice")
    store.save_constitution("shared", {}, "h")
    names = lambda owner="": sorted({v["name"] for v in store.list_constitution_versions(owner=owner)})
    assert names() == ["shared"]
    assert names("alice") == ["mine"]
    assert names(None) == ["mine", "shared"]
    store.add_prompts("set", [{"text": "x"}], owner="alice")
    assert store.prompt_sets() == []
    assert store.prompt_sets(owner="alice")[0]["n_train"] == 1


# ---------------------------------------------------------------- prompts


def test_prompt_import_dedupes(store, prompts):
    assert len(prompts) == 3 and prompts[0]["category"] == "cooking"
    added = store.add_prompts(
        "demo", [{"text": "Tell me about ships.  "}, {"text": "New one"}, {"text": "New one", "split": "heldout"}]
    )
    assert added == 1
    sets = store.prompt_sets()
    assert [(s["name"], s["n_train"], s["n_heldout"], s["source"]) for s in sets] == [("demo", 3, 1, "test")]
    assert [p["text"] for p in store.get_prompts("demo", split="heldout")] == ["What is rust?"]
    ids = [prompts[0]["id"], prompts[2]["id"]]
    assert [p["id"] for p in store.get_prompts("demo", ids=ids)] == ids


def test_prompt_import_is_one_transaction(store, prompts):
    with pytest.raises(StoreError):
        store.add_prompts("demo", [{"text": "fine"}, {"text": "bad", "split": "validation"}])
    with pytest.raises(StoreError):
        store.add_prompts("other", [{"text": "fine"}, {"text": "  "}])
    assert len(store.get_prompts("demo")) == 3
    assert [s["name"] for s in store.prompt_sets()] == ["demo"]  # 'other' was rolled back too


# ---------------------------------------------------------------- samples


def _chain(revision):
    return [{"principle_id": "p1", "critique": "too plain", "revision": revision}]


def test_sample_upsert_and_final_default(store, prompts):
    cid = store.save_constitution("c", {}, "h")
    sid = store.upsert_sample(prompts[0]["id"], cid, 0, prompted="Arr, boil it.", unprompted="Boil it.")
    s = store.get_sample(sid)
    assert s["final"] == "Arr, boil it." and s["status"] == "pending" and s["version"] == 1
    assert s["prompt"] == prompts[0]["text"] and s["set_name"] == "demo"
    assert store.upsert_sample(prompts[0]["id"], cid, 0, chain=_chain("Arr matey, boil it.")) == sid
    s = store.get_sample(sid)
    assert s["final"] == "Arr matey, boil it." and s["version"] == 2 and not s["edited"]
    s = store.update_sample(sid, 2, final="My own words.")
    assert s["edited"] and s["version"] == 3
    store.upsert_sample(prompts[0]["id"], cid, 0, chain=_chain("Another revision"))
    assert store.get_sample(sid)["final"] == "My own words."  # a pipeline write keeps the edit
    with pytest.raises(StoreError):
        store.upsert_sample(prompts[0]["id"], cid, 1, status="maybe")
    with pytest.raises(StoreError):
        store.upsert_sample(999, cid, 0, prompted="x")  # no such prompt


def test_sample_optimistic_concurrency(store, prompts):
    cid = store.save_constitution("c", {}, "h")
    sid = store.upsert_sample(prompts[0]["id"], cid, 0, prompted="text")
    seen_by_a = store.get_sample(sid)
    seen_by_b = store.get_sample(sid)
    a = store.update_sample(sid, seen_by_a["version"], status="accepted", reviewer="a")
    with pytest.raises(ConflictError) as err:
        store.update_sample(sid, seen_by_b["version"], status="rejected", note="meh", reviewer="b")
    assert "changed elsewhere" in str(err.value)
    assert err.value.current["status"] == "accepted" and err.value.current["version"] == a["version"]
    b = store.update_sample(sid, err.value.current["version"], note="meh", reviewer="b")
    assert b["status"] == "accepted" and b["note"] == "meh" and b["version"] == 3
    with pytest.raises(NotFound):
        store.update_sample(12345, 1, note="x")


def test_sample_concurrent_threads_lose_nothing(store, prompts):
    cid = store.save_constitution("c", {}, "h")
    sid = store.upsert_sample(prompts[0]["id"], cid, 0, prompted="text")
    conflicts = []

    def reviewer(name):
        for _ in range(20):
            while True:
                row = store.get_sample(sid)
                try:
                    store.update_sample(sid, row["version"], meta={**row["meta"], name: row["meta"].get(name, 0) + 1})
                    break
                except ConflictError:
                    conflicts.append(name)

    threads = [threading.Thread(target=reviewer, args=(n,)) for n in ("a", "b", "c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.get_sample(sid)["meta"] == {"a": 20, "b": 20, "c": 20}
    assert store.get_sample(sid)["version"] == 61


def test_reads_do_not_wait_behind_a_blocked_write(store):
    """Another process holds the write lock: this store's writer waits for it, its readers do not."""
    import time

    cid = store.save_constitution("c", {"name": "c", "principles": []}, "h0")
    other = sqlite3.connect(store.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # a worker in the middle of a write
    writer = threading.Thread(target=lambda: store.save_constitution("d", {"name": "d", "principles": []}, "h1"))
    writer.start()
    time.sleep(0.2)  # the writer is now waiting for the lock
    start = time.perf_counter()
    assert store.get_constitution(cid)["name"] == "c"
    assert time.perf_counter() - start < 0.5
    assert writer.is_alive()
    other.execute("COMMIT")
    writer.join(10)
    assert [v["name"] for v in store.list_constitution_versions()] == ["d", "c"]
    other.close()


def test_sample_filters_and_counts(store, prompts):
    c1 = store.save_constitution("c", {}, "h1")
    c2 = store.save_constitution("c", {}, "h2")
    p = [x["id"] for x in prompts]
    store.upsert_sample(p[0], c1, 0, prompted="short", status="accepted")
    store.upsert_sample(p[0], c1, 1, prompted="a much longer answer 100%", flags=["long", "odd"])
    store.upsert_sample(p[1], c1, 0, prompted="ships sail", status="rejected", note="off_topic")
    store.upsert_sample(p[2], c2, 0, prompted="iron oxide")
    assert store.count_samples() == {"total": 4, "pending": 2, "accepted": 1, "rejected": 1, "flagged": 1}
    assert store.count_samples(constitution_id=c1) == {
        "total": 3,
        "pending": 1,
        "accepted": 1,
        "rejected": 1,
        "flagged": 1,
    }
    assert store.count_samples(SampleFilter(constitution_id=c2))["flagged"] == 0
    assert len(store.list_samples(constitution_id=c1, status="pending")) == 1
    assert [s["prompted"] for s in store.list_samples(search="SHIP")] == ["ships sail"]  # prompt text too
    assert [s["prompted"] for s in store.list_samples(search="100%")] == ["a much longer answer 100%"]
    assert store.list_samples(search="off_top")[0]["note"] == "off_topic"
    assert store.list_samples(search="%") and not store.list_samples(search="zz%zz")
    assert [s["prompted"] for s in store.list_samples(max_len=5)] == ["short"]
    assert len(store.list_samples(min_len=10)) == 3 and len(store.list_samples(min_len=11)) == 1
    assert [s["idx"] for s in store.list_samples(flag="odd")] == [1]
    assert store.list_samples(flag="nope") == []
    assert [s["prompt_id"] for s in store.list_samples(limit=2, offset=2)] == [p[1], p[2]]
    assert store.count_samples(set_name="demo", flag="long")["total"] == 1
    assert store.list_samples(owner="someone-else") == []


# ---------------------------------------------------------------- jobs, metrics, evals


def test_jobs_rows(store):
    j = store.create_job("train", {"lr": 5e-4}, owner="me", heavy=True)
    job = store.get_job(j)
    assert job["state"] == "queued" and job["config"] == {"lr": 5e-4} and job["heavy"]
    store.update_job(j, state="running", progress_done=3, progress_total=10, result={"ok": 1})
    assert store.get_job(j)["result"] == {"ok": 1}
    assert not store.update_job(j, if_state="queued", state="failed")
    assert store.get_job(j)["state"] == "running"
    with pytest.raises(StoreError):
        store.update_job(j, colour="red")
    with pytest.raises(NotFound):
        store.update_job(999, message="x")
    j2 = store.create_job("generate", {})
    assert [x["id"] for x in store.list_jobs()] == [j2, j]
    assert [x["id"] for x in store.list_jobs(owner="me")] == [j]
    assert [x["id"] for x in store.list_jobs(state="queued")] == [j2]


def test_claim_job_serialises_heavy_jobs(store):
    a = store.create_job("train", {}, heavy=True)
    b = store.create_job("train", {}, heavy=True)
    light = store.create_job("export", {})
    for j in (a, b, light):
        store.update_job(j, pid=1)
    assert store.claim_job(b, 2) == 1  # a is queued ahead of it
    assert store.claim_job(light, 3) == 0  # light jobs never wait
    assert store.claim_job(a, 4) == 0
    assert store.claim_job(b, 2) == 1  # a is running
    store.update_job(a, state="done")
    assert store.claim_job(b, 2) == 0
    assert store.claim_job(b, 2) == -1  # not queued any more
    assert store.get_job(b)["attempts"] == 1


def test_metrics(store):
    j = store.create_job("train", {})
    store.log_metrics(j, 0, {"loss": 2.0, "kl": 0.5})
    store.log_metrics(j, 1, {"loss": 1.5})
    store.log_metrics(j, 1, {"loss": 1.25})  # a repeated step replaces
    assert [(m["step"], m["value"]) for m in store.get_metrics(j, "loss")] == [(0, 2.0), (1, 1.25)]
    assert len(store.get_metrics(j)) == 3
    with pytest.raises(StoreError):
        store.log_metrics(j, 2, {"loss": "high"})


def test_evals_and_votes(store, prompts):
    cid = store.save_constitution("c", {}, "h")
    e = store.save_eval(None, cid, [1, 2], {"kl_gap_closed": 0.86})
    assert store.get_eval(e)["results"] == {"kl_gap_closed": 0.86}
    assert [x["id"] for x in store.list_evals()] == [e]
    v = store.add_vote(e, prompts[0]["id"], "a", a_is="teacher", reviewer="r1")
    assert store.add_vote(e, prompts[0]["id"], "tie", a_is="teacher", reviewer="r1") == v
    store.add_vote(e, prompts[1]["id"], "both_bad", a_is="student", reviewer="r1")
    votes = store.list_votes(e)
    assert [(x["choice"], x["a_is"]) for x in votes] == [("tie", "teacher"), ("both_bad", "student")]
    with pytest.raises(StoreError):
        store.add_vote(e, prompts[0]["id"], "c", a_is="teacher")
    with pytest.raises(NotFound):
        store.get_eval(999)


def test_integrity_and_separate_connections(tmp_path):
    a, b = Store(tmp_path), Store(tmp_path)
    j = a.create_job("x", {})
    b.update_job(j, message="from b")
    assert a.get_job(j)["message"] == "from b"
    assert a.integrity_ok() and b.integrity_ok()
    a.close(), b.close()
    with pytest.raises(StoreError):
        a.get_job(j)


def test_draft_autosave_keeps_one_per_owner(tmp_path):
    store = Store(tmp_path)
    assert store.get_draft() is None
    store.save_draft({"name": "a"})
    store.save_draft({"name": "b"})
    store.save_draft({"name": "x"}, owner="alice")
    assert store.get_draft()["content"] == {"name": "b"}
    assert store.get_draft("alice")["content"] == {"name": "x"}


# ---------------------------------------------------------------- run directories, damage and backups


def test_a_recreated_database_never_reuses_a_job_id(tmp_path):
    """Truncate the database, keep runs/: job ids go on above the highest the workspace issued (its
    last_job_id file, else its run directories), so the old run's data and checkpoints are never taken
    for a new job's; a directory at a job's id that is not the job's is refused, never written into."""
    s = Store(tmp_path)
    old = s.create_job("train", {"constitution": "pirate"})
    (s.runs_dir / str(old) / "data.json").write_text('{"old": true}')
    (s.runs_dir / str(old) / "checkpoints" / "step-000020").mkdir(parents=True)
    s.close()
    first = old
    for recreate in ("with the id file", "from the run directories alone"):
        shutil.rmtree(tmp_path / "backups")  # as if there were none: the file is just empty
        (tmp_path / workspace.DB_NAME).write_bytes(b"")
        for suffix in ("-wal", "-shm"):
            (tmp_path / (workspace.DB_NAME + suffix)).unlink(missing_ok=True)
        if recreate == "from the run directories alone":
            (tmp_path / workspace.JOB_IDS_FILE).unlink()
        s = Store(tmp_path)
        new = s.create_job("train", {"constitution": "concise"})
        assert new > old, recreate
        assert sorted(p.name for p in (s.runs_dir / str(new)).iterdir()) == [workspace.RUN_KEY_FILE]
        assert (s.runs_dir / str(first) / "data.json").read_text() == '{"old": true}'  # left as it was
        assert s.run_dir(new) == s.runs_dir / str(new)  # its own: kept as it is
        old = new
        s.close()
    # a directory without the job's key (copied in by hand, or from another workspace) is not the job's
    s = Store(tmp_path)
    run = s.runs_dir / str(new)
    (run / workspace.RUN_KEY_FILE).write_text("another job's key\n")
    with pytest.raises(StoreError, match=f"is not job {new}'s"):
        s.run_dir(new)
    (run / workspace.RUN_KEY_FILE).unlink()
    with pytest.raises(StoreError, match="will not write into it"):
        s.run_dir(new)
    s.close()


def test_jobs_from_before_run_keys_keep_their_directories(tmp_path):
    s = Store(tmp_path)
    job = s.create_job("train", {})
    s._conn.execute("UPDATE jobs SET run_key = NULL WHERE id = ?", (job,))  # as migrated from an older version
    (s.runs_dir / str(job) / workspace.RUN_KEY_FILE).unlink()
    (s.runs_dir / str(job) / "data.json").write_text("{}")
    assert (s.run_dir(job) / "data.json").exists()
    s.close()


@pytest.mark.parametrize("damage", ["garbage", "half"])
def test_a_damaged_database_is_reported_with_what_to_do(tmp_path, damage):
    import os

    s = Store(tmp_path)
    for i in range(200):
        s.save_constitution(f"c{i}", {"text": "x" * 400}, f"h{i}")
    s.close()
    db = tmp_path / workspace.DB_NAME
    data = db.read_bytes()
    db.write_bytes(os.urandom(len(data)) if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(StoreError, match="cannot be used.*ctxdistill doctor --restore"):
        Store(tmp_path)
    (tmp_path / "backups").rename(tmp_path / "gone")
    with pytest.raises(StoreError, match="no backup: move the file aside"):
        Store(tmp_path)


def test_an_emptied_database_with_a_backup_is_refused(tmp_path):
    Store(tmp_path).close()
    (tmp_path / workspace.DB_NAME).write_bytes(b"")
    with pytest.raises(StoreError, match="empty.*doctor --restore"):
        Store(tmp_path)


def test_rolling_backup_and_restore(tmp_path, monkeypatch):
    s = Store(tmp_path)
    first = workspace.backups(tmp_path)
    assert [p.name for p in first] == [f"{workspace.DB_NAME}.1"]
    assert s.backup() is None  # not due yet
    kept = s.save_constitution("kept", {"a": 1}, "h1")
    monkeypatch.setattr(workspace, "BACKUP_EVERY_S", 0.0)
    s.backup()
    s.backup()
    s.backup()
    assert [p.name for p in workspace.backups(tmp_path)] == [f"{workspace.DB_NAME}.{n}" for n in (1, 2)]
    s.save_constitution("lost", {"a": 2}, "h2")
    late = s.create_job("train", {})  # made after the backup: its directory is not the restored job's
    (s.runs_dir / str(late) / "data.json").write_text("{}")
    s.close()
    (tmp_path / workspace.DB_NAME).write_bytes(b"not a database at all" * 100)
    result = workspace.restore_backup(tmp_path)
    assert result["saved_as"] and (tmp_path / result["saved_as"]).read_bytes().startswith(b"not a database")
    s = Store(tmp_path)
    assert [v["name"] for v in s.list_constitution_versions()] == ["kept"] and s.get_constitution(kept)[
        "name"
    ] == "kept"
    again = s.create_job("train", {})
    assert again > late and not (s.runs_dir / str(again) / "data.json").exists()  # ids are never issued twice
    s.close()


def backed_up_workspace(home, monkeypatch) -> dict:
    """A workspace with a backup, then more made after it: 2 jobs, 1 constitution version, 1 sample."""
    s = Store(home)
    s.save_constitution("kept", {"a": 1}, "h1")
    first = s.create_job("train", {})
    monkeypatch.setattr(workspace, "BACKUP_EVERY_S", 0.0)
    s.backup()
    time.sleep(0.05)  # the rows below are newer than the backup file
    cid = s.save_constitution("new", {"a": 2}, "h2")
    s.add_prompts("p", [{"text": "hi"}])
    s.upsert_sample(s.get_prompts("p")[0]["id"], cid, prompted="Arr")
    later = [s.create_job("train", {}), s.create_job("train", {})]
    s.close()
    return {"first": first, "later": later}


def test_restoring_a_sound_database_needs_force_and_says_what_it_loses(tmp_path, monkeypatch):
    made = backed_up_workspace(tmp_path, monkeypatch)
    db = tmp_path / workspace.DB_NAME
    before = db.read_bytes()
    with pytest.raises(
        StoreError, match=r"passes its integrity check.*\(2 jobs, 1 constitution versions, 1 samples\).*--force"
    ):
        workspace.restore_backup(tmp_path)
    assert db.read_bytes() == before and not list(tmp_path.glob("*.replaced-*"))  # nothing was changed
    result = workspace.restore_backup(tmp_path, force=True)
    assert result["lost"] == {"jobs": 2, "constitution versions": 1, "samples": 1}
    assert ".replaced-" in result["saved_as"] and not list(tmp_path.glob("*.damaged-*"))  # it was not damaged
    with Store(tmp_path) as s:
        assert [v["name"] for v in s.list_constitution_versions()] == ["kept"]
        assert s.create_job("train", {}) > max(made["later"])  # a restore never issues an id twice


def test_a_damaged_backup_is_skipped_and_none_good_is_refused(tmp_path, monkeypatch):
    backed_up_workspace(tmp_path, monkeypatch)
    with Store(tmp_path) as s:
        s.backup()  # .1 is now the newest, .2 the older
    newest = tmp_path / workspace.BACKUP_DIR / f"{workspace.DB_NAME}.1"
    newest.write_bytes(b"garbage" * 1000)
    result = workspace.restore_backup(tmp_path, force=True)
    assert [b["path"] for b in result["skipped"]] == [str(newest)] and result["restored"].endswith(".2")
    (tmp_path / workspace.BACKUP_DIR / f"{workspace.DB_NAME}.2").write_bytes(b"")
    (tmp_path / workspace.BACKUP_DIR / f"{workspace.DB_NAME}.2").write_bytes(b"\0" * 4096)
    with pytest.raises(StoreError, match=r"no usable backup .*ctxdistill.db.1 is damaged .*ctxdistill.db.2 is damaged"):
        workspace.restore_backup(tmp_path, force=True)


def test_a_restore_never_runs_beside_an_open_workspace_or_another_restore(tmp_path, monkeypatch):
    backed_up_workspace(tmp_path, monkeypatch)
    s = Store(tmp_path)  # the app, a command or a job's worker
    with pytest.raises(workspace.WorkspaceBusy, match="is in use.*nothing was changed"):
        workspace.restore_backup(tmp_path, force=True)
    s.close()
    with workspace.alone(tmp_path):  # a restore under way
        with pytest.raises(workspace.WorkspaceBusy, match="is in use"):
            workspace.restore_backup(tmp_path, force=True)
        monkeypatch.setattr(workspace, "LOCK_WAIT_S", 0.3)
        with pytest.raises(workspace.WorkspaceBusy, match="is being restored"):
            Store(tmp_path)  # a command started meanwhile waits, then says why
    assert workspace.restore_backup(tmp_path, force=True)["restored"]


def test_a_crashed_process_does_not_keep_the_workspace_locked(tmp_path, monkeypatch):
    backed_up_workspace(tmp_path, monkeypatch)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from ctxdistill.store import Store; s = Store({str(tmp_path)!r}); print(1, flush=True); "
            "import time; time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert holder.stdout.readline().strip() == b"1"
        with pytest.raises(workspace.WorkspaceBusy):
            workspace.restore_backup(tmp_path, force=True)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert workspace.restore_backup(tmp_path, force=True)["restored"]


def test_a_full_disk_reports_itself(tmp_path):
    """SQLite rolls a transaction back by itself when the disk is full; rolling back again used to
    replace that error by "cannot rollback - no transaction is active"."""
    s = Store(tmp_path)
    pages = s._conn.execute("PRAGMA page_count").fetchone()[0]
    s._conn.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(sqlite3.OperationalError, match="full"):
        s.save_constitution("big", {"x": "y" * 200_000}, "h")
    s.close()


def test_an_unusable_workspace_is_one_clear_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError, match="cannot use .* as the workspace"):
        Store(tmp_path / "file" / "ws")
