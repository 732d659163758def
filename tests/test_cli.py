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
    code, out, _ = run(capsys, "preview", "--constitution", PIRATE, "--prompt", "Hi there", "--samples", "2",
                       "--seed", "3", "--max-new-tokens", "6", "--temperature", "1.0", "--model", str(tiny_checkpoint), "--json")
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
