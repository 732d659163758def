"""The CLI's one error boundary: each domain error is one line `error: ...` with exit status 2, a
bug is a traceback and exit 1; renamed flags still work with a warning; ids beyond SQLite's range,
hub errors and floods of user input give a short plain line. No model is loaded here."""

import argparse
import json
import math

import pytest

from ctxdistill import adapters, cli, curate, flags, precision
from ctxdistill.store import Store

PIRATE = "assets/constitutions/pirate.yaml"


def run(capsys, *argv):
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:  # argparse's own errors exit from parse_args
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> bool:
    return err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


@pytest.fixture
def ws(tmp_path):
    return str(tmp_path / "ws")


def _bad_yaml(tmp_path):
    (tmp_path / "bad.yaml").write_text("name: x\nprinciples: [\n  - oops: {\n")
    return ["preview", "--constitution", str(tmp_path / "bad.yaml"), "--prompt", "Hi"]


def _not_utf8(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe bad")
    return ["import", str(tmp_path / "bad.txt"), "--prompt-set", "p"]


def _generate_job(tmp_path):
    with Store(tmp_path / "ws") as store:
        job = store.create_job("generate", {"constitution_id": 1})
    return ["export", "--run", str(job), "--out", str(tmp_path / "out")]


def _full_disk(tmp_path, monkeypatch):
    with Store(tmp_path / "ws") as store:
        store.save_constitution("c", {"name": "c"}, "h")
    monkeypatch.setattr(curate, "export", lambda *a, **kw: (_ for _ in ()).throw(OSError(28, "No space left")))
    return ["export", "--constitution", "1", "--out", str(tmp_path / "s.jsonl")]


def _hub_refuses(tmp_path, monkeypatch):
    import httpx2
    from huggingface_hub.errors import RepositoryNotFoundError

    response = httpx2.Response(401, request=httpx2.Request("POST", "https://huggingface.co/api/repos/create"))
    error = RepositoryNotFoundError(
        "401 Client Error.\n\nRepository Not Found for url: https://huggingface.co/api/repos/create.\n"
        "Please make sure you specified the correct `repo_id` and `repo_type`.\nIf you are trying to access a "
        "private or gated repo, make sure you are authenticated.",
        response=response,
    )
    _full_disk(tmp_path, monkeypatch)
    monkeypatch.setattr(curate, "export", lambda *a, **kw: (_ for _ in ()).throw(error))
    return ["export", "--constitution", "1", "--format", "datasets", "--out", str(tmp_path / "d"), "--hub-id", "me/d"]


# one case per error type: how to cause it (a real bad input, or a library call patched to fail),
# the class main() must have caught, and a piece of the line it prints
CASES = {
    "UserError": (lambda tmp_path, mp: ["train"], cli.UserError, "--constitution is required"),
    "StoreError": (lambda tmp_path, mp: ["train", "--resume", "7"], "StoreError", "job 7 not found"),
    "ConstitutionError": (lambda tmp_path, mp: _bad_yaml(tmp_path), "ConstitutionError", "not valid YAML"),
    "TrainError": (
        lambda tmp_path, mp: ["train", "--constitution", PIRATE, "--from-run", "99"],
        "TrainError",
        "run 99 not found",
    ),
    "EvalError": (lambda tmp_path, mp: ["eval", "--constitution", PIRATE, "--run", "999"], "EvalError", "no run 999"),
    "ModelError": (
        lambda tmp_path, mp: ["preview", "--constitution", PIRATE, "--prompt", "Hi", "--model", "/no/such/model"],
        "ModelError",
        "not found",
    ),
    "AdapterError": (lambda tmp_path, mp: _generate_job(tmp_path), adapters.AdapterError, "no finished adapter"),
    "ImportFileError": (lambda tmp_path, mp: _not_utf8(tmp_path), "ImportFileError", "not UTF-8"),
    "ValueError": (
        lambda tmp_path, mp: ["preview", "--constitution", PIRATE, "--prompt", "Hi", "--max-new-tokens", "0"],
        ValueError,
        "max new tokens",
    ),
    "OSError": (_full_disk, OSError, "OSError: [Errno 28] No space left"),
    "HfHubHTTPError": (_hub_refuses, OSError, "the Hugging Face hub answered 401"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_domain_error_is_one_line_and_exit_2(name, tmp_path, monkeypatch, capsys, ws):
    cause, caught, fragment = CASES[name]
    argv = cause(tmp_path, monkeypatch)
    seen = []
    real = cli.failure
    monkeypatch.setattr(cli, "failure", lambda exc: seen.append(exc) or real(exc))
    code, out, err = run(capsys, *argv, "--workspace", ws)
    assert code == 2 and one_line(err) and fragment in err, err
    assert len(seen) == 1 and any(c is caught or c.__name__ == caught for c in type(seen[0]).__mro__), seen


def test_a_bug_shows_its_traceback_and_says_it_is_one(monkeypatch, capsys, ws):
    def broken():
        raise KeyError("cpu_model")

    monkeypatch.setattr(precision, "facts", broken)
    code, _, err = run(capsys, "info", "--no-measure", "--workspace", ws)
    assert code == 1 and "Traceback" in err and "KeyError" in err
    assert err.splitlines()[-1].startswith("error: internal error (KeyError: 'cpu_model')")


@pytest.mark.parametrize("old", ["--set", "--set-name", "--prompts"])
def test_an_old_prompt_set_spelling_works_with_a_warning(old, capsys, tmp_path, ws):
    (tmp_path / "p.txt").write_text("Why is the sky blue?\nWhat is rain?\n")
    code, out, err = run(capsys, "import", str(tmp_path / "p.txt"), old, "mine", "--workspace", ws, "--json")
    assert code == 0 and json.loads(out)["set"] == "mine"
    assert f"warning: {old} is deprecated" in err and "use --prompt-set" in err
    assert "--prompt-set" in cli.build_parser().format_help() and old in cli.build_parser().format_help()


def test_every_command_takes_prompt_set_under_one_name():
    parser = cli.build_parser()
    for argv in (
        ["import", "x.txt", "--prompt-set", "s"],
        ["export", "--out", "o", "--prompt-set", "s"],
        ["generate", "--constitution", "1", "--prompt-set", "s"],
        ["revise", "--constitution", "1", "--prompt-set", "s"],
        ["train", "--prompt-set", "s"],
        ["eval", "--constitution", "1", "--run", "1", "--prompt-set", "s"],
        ["influence", "--constitution", "c", "--prompt-set", "s"],
        ["prefs", "make", "--constitution", "1", "--prompt-set", "s"],
    ):
        assert parser.parse_args(argv).prompt_set == "s", argv
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    old_spellings = {
        (name, option)
        for name, sub in commands.items()
        for action in sub._actions
        for option in action.option_strings
        if option in flags.RENAMED_FLAGS
    }
    assert old_spellings == set()  # an old spelling defined by a command would be renamed away before parsing


@pytest.mark.parametrize(
    "argv",
    [
        ["export", "--run", str(2**70), "--out", "o"],
        ["train", "--resume", str(2**70)],
        ["train", "--constitution", PIRATE, "--from-run", str(2**70)],
        ["eval", "--constitution", PIRATE, "--run", str(-(2**70))],
    ],
)
def test_an_id_beyond_sqlite_is_refused_plainly(argv, capsys, ws):
    code, _, err = run(capsys, *argv, "--workspace", ws)
    assert code == 2 and one_line(err) and "out of range (at most 9223372036854775807)" in err, err
    assert "OverflowError" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--schedule", "WSD"],
        ["train", "--attack-share", "nan"],
        ["generate", "--temperature", "-1"],
        ["eval", "--run", "1", "--n-boot", "0"],
        ["prefs", "make", "--answers", "1"],
    ],
)
def test_a_bad_flag_refuses_before_the_constitution_file_is_saved(argv, capsys, ws):
    code, _, err = run(capsys, *argv, "--constitution", PIRATE, "--workspace", ws)
    assert code == 2 and one_line(err), err
    with Store(ws) as store:
        assert store.list_constitution_versions(owner=None) == []


def test_a_constitution_version_beyond_sqlite_is_not_found(capsys, ws):
    code, _, err = run(capsys, "export", "--constitution", str(2**70), "--out", "o", "--workspace", ws)
    assert code == 2 and one_line(err) and "no constitution version" in err and "OverflowError" not in err


def test_messages_quote_a_short_prefix_of_a_flood(capsys, ws):
    huge = "x" * 1_000_000
    for argv in (
        ["train", "--constitution", PIRATE, "--replay-set", huge, "--replay-fraction", "0.2"],
        ["train", "--constitution", PIRATE, "--baked-gauge", ",".join(f"p{i}" for i in range(10_000))],
        ["train", "--constitution", PIRATE, "--loss", huge],
        ["preview", "--constitution", PIRATE, "--prompt", "Hi", "--model", "/" + huge],
    ):
        code, _, err = run(capsys, *argv, "--workspace", ws)
        assert code == 2 and one_line(err) and len(err) < 600, (argv[:3], err[:300])
    assert "characters)" in err  # says how long the input was


def test_minus_zero_strength_exports_as_zero(capsys, tiny_model, tiny_checkpoint, tmp_path, ws):
    from tests.test_evaluate import _adapter

    with Store(ws) as store:
        job = store.create_job("train", {"model": str(tiny_checkpoint), "constitution_id": 1}, heavy=True)
        store.update_job(job, state="done")
        _adapter(tiny_model, store.runs_dir / str(job) / "adapter", 0.5)
    out = tmp_path / "exported"
    code, stdout, _ = run(
        capsys, "export", "--run", str(job), "--out", str(out), "--strength", "-0.0", "--workspace", ws
    )
    assert code == 0 and "strength 0)" in stdout and "strength -0" not in stdout  # the path may hold "-0"
    alpha = json.loads((out / "adapter_config.json").read_text())["lora_alpha"]
    assert alpha == 0 and math.copysign(1, alpha) == 1  # not -0.0
    strength = json.loads((out / adapters.RUN_FILE).read_text())["strength"]
    assert strength == 0 and math.copysign(1, strength) == 1  # the file names paths, which may hold "-0"
    assert "| strength | 0 " in (out / "README.md").read_text()


def test_a_hub_refusal_of_a_model_is_one_line_naming_it_and_what_to_do(monkeypatch, capsys, ws):
    import httpx2
    import transformers
    from huggingface_hub.errors import RepositoryNotFoundError

    from ctxdistill import models

    def refused(*args, **kwargs):
        url = "https://huggingface.co/nobody/private/resolve/main/config.json"
        response = httpx2.Response(401, request=httpx2.Request("GET", url))
        try:
            raise RepositoryNotFoundError(
                f"401 Client Error.\n\nRepository Not Found for url: {url}.", response=response
            )
        except RepositoryNotFoundError as exc:
            raise OSError(
                "nobody/private is not a local folder and is not a valid model identifier\n"
                "If this is a private repository, make sure to pass a token"
            ) from exc

    monkeypatch.setattr(models, "hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refused)
    code, _, err = run(
        capsys, "preview", "--constitution", PIRATE, "--prompt", "Hi", "--model", "nobody/private", "--workspace", ws
    )
    assert code == 2 and one_line(err), err
    assert "'nobody/private'" in err and "answered 401" in err and "HF_TOKEN" in err and "HfHubHTTPError" not in err
