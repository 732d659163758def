"""The `ctxdistill` command on a tiny local checkpoint: output shape and every bad input."""

import json

import pytest

from ctxdistill.cli import main

PIRATE = "assets/constitutions/pirate.yaml"


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_preview_json(capsys, tiny_checkpoint, workspace):
    code, out, _ = run(
        capsys,
        "preview",
        "--constitution",
        PIRATE,
        "--prompt",
        "Hi there",
        "--samples",
        "2",
        "--seed",
        "3",
        "--max-new-tokens",
        "6",
        "--temperature",
        "1.0",
        "--model",
        str(tiny_checkpoint),
        "--json",
    )
    assert code == 0
    result = json.loads(out)
    assert set(result) >= {"prompted", "unprompted", "mean_kl"}
    assert len(result["prompted"]) == 2 and len(result["unprompted"]) == 2
    assert result["mean_kl"] > 0


def write(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("empty.yaml", b"name: x\nprinciples: []\n", "empty"),
        ("blank.yaml", b"name: x\nprinciples:\n- id: a\n  text: '  '\n", "no text"),
        ("dup.yaml", b"name: x\nprinciples:\n- {id: a, text: one}\n- {id: a, text: two}\n", "a"),
        ("bad.yaml", b"name: x\nprinciples: [\n  - oops: {\n", "line"),
        ("bad.json", b'{"name": "x", "principles": [}', "line"),
        ("latin1.yaml", "name: café\nprinciples: [{id: a, text: olé}]\n".encode("latin-1"), "UTF-8"),
    ],
)
def test_bad_constitution_files(capsys, tmp_path, name, data, message):
    code, _, err = run(capsys, "preview", "--constitution", write(tmp_path, name, data), "--prompt", "Hi")
    assert code == 2 and message in err and "Traceback" not in err


def test_too_long_constitution_names_sizes(capsys, tmp_path, tiny_checkpoint):
    text = " ".join(["sail"] * 900)
    path = write(tmp_path, "long.yaml", f"name: long\nprinciples:\n- id: a\n  text: {text}\n".encode())
    code, _, err = run(capsys, "preview", "--constitution", path, "--prompt", "Hi", "--model", str(tiny_checkpoint))
    assert code == 2 and "tokens" in err and "512" in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--prompt", "   "], "prompt is empty"),
        (["--prompt", "Hi", "--max-new-tokens", "0"], "max new tokens"),
        (["--prompt", "Hi", "--max-new-tokens", "100000"], "max new tokens"),
        (["--prompt", "Hi", "--model", "/no/such/model"], "not found"),
        (["--prompt", "Hi", "--model", "nobody/no-such-model"], "cannot be reached"),
    ],
)
def test_bad_arguments(capsys, extra, message):
    code, _, err = run(capsys, "preview", "--constitution", PIRATE, *extra)
    assert code == 2 and message in err


def test_missing_constitution_file(capsys):
    code, _, err = run(capsys, "preview", "--constitution", "/no/such.yaml", "--prompt", "Hi")
    assert code == 2 and "No such file" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--constitution", PIRATE, "--temperature", "-1"], "temperature must be between 0 and 5"),
        (["train", "--constitution", PIRATE, "--weight-decay", "nan"], "weight decay must be a number of 0 or more"),
        (["train", "--constitution", PIRATE, "--max-grad-norm", "inf"], "max grad norm"),
        (["train", "--constitution", PIRATE, "--sample-tokens", "5000"], "teacher sampling: max new tokens"),
        (["train"], "--constitution is required (or --resume RUN"),
        (["train", "--resume", "7"], "job 7 not found"),
        (["train", "--steps", "many"], "invalid int value"),
        (["serve", "--port", "99999"], "--port must be between 1 and 65535"),
        (["serve", "--workspace", "/proc/self"], "as the workspace"),
        (["doctor", "--restore"], "no usable backup"),
    ],
)
def test_every_failure_is_one_line_before_any_job(capsys, tmp_path, argv, message):
    """Checked before a job is queued (none is), and said in one line, never a traceback."""
    from ctxdistill.store import Store

    argv = [*argv, "--workspace", str(tmp_path / "ws")] if "--workspace" not in argv else argv
    try:
        code, _, err = run(capsys, *argv)
    except SystemExit as exc:  # argparse's own errors exit from parse_args
        code, err = exc.code, capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1 and err.startswith("error: "), err
    if (tmp_path / "ws" / "ctxdistill.db").exists():
        assert Store(tmp_path / "ws").list_jobs() == []


def test_resume_needs_no_constitution(capsys, tmp_path, monkeypatch):
    from ctxdistill import jobs
    from ctxdistill.store import Store

    store = Store(tmp_path)
    job = store.create_job("train", {"constitution_id": 1}, heavy=True)
    store.update_job(job, state="failed", error="killed")
    resumed = []
    monkeypatch.setattr(jobs, "resume", lambda store, job_id: resumed.append(job_id) or job_id)
    code, out, _ = run(capsys, "train", "--resume", str(job), "--detach", "--workspace", str(tmp_path))
    assert code == 0 and resumed == [job] and f"job {job} started" in out


def test_doctor_reports_and_restores(capsys, tmp_path):
    from ctxdistill.store import DB_NAME, Store

    Store(tmp_path).close()
    code, out, _ = run(capsys, "doctor", "--workspace", str(tmp_path))
    assert code == 0 and ": ok" in out and "backup" in out
    (tmp_path / DB_NAME).write_bytes(b"garbage" * 1000)
    code, _, err = run(capsys, "eval", "--constitution", "1", "--run", "1", "--workspace", str(tmp_path))
    assert code == 2 and "doctor --restore" in err and err.count("\n") == 1
    code, out, err = run(capsys, "doctor", "--workspace", str(tmp_path))
    assert code == 2 and "doctor --restore" in err
    code, out, _ = run(capsys, "doctor", "--restore", "--workspace", str(tmp_path))
    assert code == 0 and "restored the backup" in out
    Store(tmp_path).close()
