"""Hostile input: names that try to leave the workspace, uploads too big or of the wrong type,
pickles, remote code, markup in text shown by the app, and hub tokens that must not be persisted.
(The same markup through a real browser: tests/e2e/test_space.py.)"""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest

from ctxdistill import models
from ctxdistill.safety import UnsafeInput, check_upload, redact, safe_path
from ctxdistill.store import Store
from ctxdistill.ui.app import build_app
from ctxdistill.ui.common import AppContext
from tests.test_demo import visitor as demo_visitor

REPO = Path(__file__).resolve().parents[1]
XSS = ["<script>window.__xss=1</script>", '<img src=x onerror="window.__xss=2">']
TOKEN = "hf_NotARealTokenButSecret0123456789"


# --------------------------------------------------------------------------- paths


@pytest.mark.parametrize(
    "name", ["../x", "a/../../x", "/etc/passwd", "~/x", "..", "a\\..\\..\\x", "x\x00y", "", "runs/../../outside"]
)
def test_names_cannot_leave_the_workspace(tmp_path, name):
    with pytest.raises(UnsafeInput):
        safe_path(tmp_path, name)


def test_symlinks_out_of_the_workspace_are_refused(tmp_path):
    root, outside = tmp_path / "ws", tmp_path / "outside"
    root.mkdir(), outside.mkdir()
    (root / "link").symlink_to(outside)
    with pytest.raises(UnsafeInput, match="outside"):
        safe_path(root, "link/adapter")
    assert safe_path(root, "runs/3/adapter") == (root / "runs" / "3" / "adapter").resolve()


def test_adapter_and_run_ids_from_the_api_are_not_paths(tmp_path):
    ctx = AppContext(home=tmp_path, demo=True)
    blocks = build_app(ctx)
    distill = {
        f.fn.__name__: inspect.unwrap(f.fn)
        for f in blocks.fns.values()  # past the poll's memo
        if f.fn is not None and f.fn.__module__ == "ctxdistill.ui.distill"
    }
    visitor = demo_visitor(ctx, "v")
    for bad in ("../../etc", "1/../../x", "/etc", "1; rm -rf /"):
        with pytest.raises(gr.Error, match="No run or job"):
            ctx.job(bad, visitor)
        with pytest.raises(gr.Error, match="No run or job"):
            distill["on_export"](bad, False, 1.0, request=visitor)
        status, _, _, _, log, _, _ = distill["poll"](bad, "nothing shown yet", request=visitor)
        assert "No run yet" in status and log == ""


# --------------------------------------------------------------------------- uploads


def test_uploads_are_size_capped_and_type_checked(tmp_path):
    ok = tmp_path / "c.yaml"
    ok.write_text("name: x\nprinciples: []\n")
    assert check_upload(ok, (".yaml",), 1024) == ok
    big = tmp_path / "big.yaml"
    big.write_text("a: b\n" * 1000)
    with pytest.raises(UnsafeInput, match="limited"):
        check_upload(big, (".yaml",), 1024)
    with pytest.raises(UnsafeInput, match="not accepted"):
        check_upload(tmp_path / "c.yaml", (".json",), 1024)
    exe = tmp_path / "evil.yaml"
    exe.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)))
    with pytest.raises(UnsafeInput, match="not UTF-8"):
        check_upload(exe, (".yaml",), 1 << 20)
    fake = tmp_path / "data.parquet"
    fake.write_text("a,b\n1,2\n")
    with pytest.raises(UnsafeInput, match="not a .parquet"):
        check_upload(fake, (".parquet",), 1 << 20)


def test_demo_upload_cap_in_the_constitution_import(tmp_path, monkeypatch):
    monkeypatch.setenv("CTXDISTILL_DEMO_UPLOAD_MB", "0.001")
    ctx = AppContext(home=tmp_path / "ws", demo=True)
    blocks = build_app(ctx)
    upload = next(f.fn for f in blocks.fns.values() if f.api_name == "from_upload")
    big = tmp_path / "big.yaml"
    big.write_text("name: big\n" + "# padding\n" * 500)
    with pytest.raises(gr.Error, match="limited"):
        upload(str(big), {}, None, request=demo_visitor(ctx, "v"))


# --------------------------------------------------------------------------- oversized sets (issue 24)


def jsonl(path: Path, line: str, n: int = 1) -> Path:
    path.write_text((line + "\n") * n)
    return path


@pytest.mark.parametrize(
    "what, make, message",
    [
        (
            "a 200 MB capability set",
            lambda p: os.truncate(jsonl(p, ""), 200 * 2**20),
            r"is 200\.0 MB; a set may be at most 64 MB",
        ),
        (
            "100,000 capability items",
            lambda p: jsonl(p, '{"prompt": "2+2?", "answers": ["4"]}', 100_000),
            r"has 100,000 rows; a set may hold at most 50,000",
        ),
        (
            "a 50 MB prompt",
            lambda p: jsonl(p, '{"prompt": "' + "x" * (50 * 2**20) + '", "answers": ["4"]}'),
            r"row 1 is 51,200 KB; one row may be at most 256 KB",
        ),
    ],
)
def test_oversized_capability_sets_are_refused_with_the_limit(tmp_path, what, make, message):
    from ctxdistill.capability import CapabilityError, load_items

    make(tmp_path / "set.jsonl")
    with pytest.raises(CapabilityError, match=message + ".*split it into smaller ones"):
        load_items(tmp_path / "set.jsonl")


def test_an_oversized_attack_template_is_refused(tmp_path):
    from ctxdistill.probes import RobustnessError, load_attacks

    path = jsonl(tmp_path / "attacks.jsonl", json.dumps({"kind": "big", "template": "x" * 2**20 + " {prompt}"}))
    with pytest.raises(RobustnessError, match=r"the attack set attacks.jsonl row 1 is 1,024 KB; .* at most 256 KB"):
        load_attacks(path)


def test_demo_set_limits_are_tight_and_shipped_sets_pass(tmp_path, monkeypatch):
    from ctxdistill.capability import CapabilityError, load_items
    from ctxdistill.probes import load_attacks

    monkeypatch.setenv("CTXDISTILL_DEMO", "1")
    assert load_items() and load_attacks()  # the shipped sets are within the demo's limits
    path = jsonl(tmp_path / "set.jsonl", '{"prompt": "2+2?", "answers": ["4"]}', 501)
    with pytest.raises(CapabilityError, match="has 501 rows; a set may hold at most 500: duplicate this Space"):
        load_items(path)


def test_an_oversized_prompt_file_is_refused_before_anything_is_stored(tmp_path, capsys, monkeypatch):
    from ctxdistill import cli

    home = tmp_path / "ws"
    many = tmp_path / "many.txt"
    many.write_text("".join(f"prompt {i}?\n" for i in range(100_000)))
    argv = ["import", str(many), "--prompt-set", "many", "--workspace", str(home)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the prompt file many.txt has 100,000 rows; a set may hold at most 50,000" in err
    monkeypatch.setenv("CTXDISTILL_DEMO", "1")
    big = tmp_path / "big.txt"
    os.truncate(jsonl(big, ""), 3 * 2**20)
    assert cli.main(["import", str(big), "--prompt-set", "big", "--workspace", str(home)]) == 2
    assert "is 3.0 MB; a set may be at most 2 MB: duplicate this Space" in capsys.readouterr().err
    with Store(home) as store:
        assert store.prompt_sets() == []  # nothing stored


# --------------------------------------------------------------------------- no pickle, no remote code


def test_no_pickle_loading_in_the_package():
    offenders = []
    for path in (REPO / "ctxdistill").rglob("*.py"):
        text = path.read_text()
        for pattern in (
            r"import pickle",
            r"pickle\.loads?\(",
            r"read_pickle",
            r"allow_pickle\s*=\s*True",
            r"weights_only\s*=\s*False",
            r"trust_remote_code\s*=\s*True",
        ):
            offenders += [f"{path.name}: {pattern}" for _ in re.finditer(pattern, text)]
        offenders += [
            f"{path.name}: torch.load without weights_only=True"
            for call in re.findall(r"torch\.load\([^)]*\)", text)
            if "weights_only=True" not in call
        ]
    assert offenders == []


def test_adapters_load_from_safetensors_only(tmp_path):
    from ctxdistill.adapters import AdapterError, check_adapter

    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter_model.bin").write_bytes(b"not loaded")
    with pytest.raises(AdapterError, match="safetensors"):
        check_adapter(tmp_path, model=None)


@pytest.mark.parametrize("demo, env, expected", [(False, None, False), (False, "1", True), (True, "1", False)])
def test_model_loading_uses_safetensors_and_remote_code_policy(tmp_path, monkeypatch, demo, env, expected):
    import transformers

    seen = {}

    class Fake:
        pad_token = "x"

        @classmethod
        def from_pretrained(cls, location, **kwargs):
            seen.setdefault("calls", []).append(kwargs)
            return cls()

        def to(self, device):
            return self

        def eval(self):
            return self

    monkeypatch.setattr(transformers, "AutoTokenizer", Fake)
    monkeypatch.setattr(transformers, "AutoModelForCausalLM", Fake)
    monkeypatch.setenv("CTXDISTILL_DEMO", "1" if demo else "0")
    if env:
        monkeypatch.setenv("CTXDISTILL_TRUST_REMOTE_CODE", env)
    (tmp_path / "config.json").write_text("{}")
    models.load_model(str(tmp_path))
    tokenizer_kwargs, model_kwargs = seen["calls"]
    assert model_kwargs["use_safetensors"] is True
    assert tokenizer_kwargs["trust_remote_code"] is model_kwargs["trust_remote_code"] is expected


def test_cli_trust_remote_code_flag(monkeypatch, capsys, tmp_path):
    from ctxdistill import cli, demo

    monkeypatch.setenv("CTXDISTILL_TRUST_REMOTE_CODE", "0")
    monkeypatch.setenv("CTXDISTILL_DEMO", "1")
    assert cli.build_parser().parse_args(["train", "--constitution", "x"]).trust_remote_code is False
    argv = ["export", "--trust-remote-code", "--workspace", str(tmp_path), "--constitution", "1", "--out", "x.jsonl"]
    assert cli.main(argv) == 2
    assert "refused in demo mode" in capsys.readouterr().err and not demo.trust_remote_code()
    monkeypatch.setenv("CTXDISTILL_DEMO", "0")
    cli.allow_remote_code(True)  # local: for this process and the job workers it starts
    assert os.environ["CTXDISTILL_TRUST_REMOTE_CODE"] == "1" and demo.trust_remote_code()


# --------------------------------------------------------------------------- markup shown as text


def test_every_view_shows_markup_as_text(tmp_path):
    """Markdown is sanitised, tables hold plain strings, and raw HTML only comes from code that escapes."""
    blocks = build_app(AppContext(home=tmp_path))
    for block in blocks.blocks.values():
        if isinstance(block, (gr.Markdown, gr.Chatbot)):
            assert block.sanitize_html, f"{block.elem_id} renders unsanitised HTML"
        if isinstance(block, gr.Dataframe):
            types = block.datatype if isinstance(block.datatype, list) else [block.datatype]
            assert not {"html", "markdown"} & set(types), f"{block.elem_id} renders cell markup"


def test_html_views_escape_user_and_model_text(tmp_path):
    from ctxdistill.ui import compare, data, distill, samples

    hostile = " ".join(XSS)
    job = {
        "id": 1,
        "kind": "train",
        "state": "failed",
        "progress_done": 1,
        "progress_total": 2,
        "message": hostile,
        "error": hostile,
        "result": None,
        "config": {"steps": 2},
    }
    sample = {
        "flags": ["failed_check:" + hostile],
        "status": "pending",
        "edited": False,
        "meta": {"revise_start": hostile},
        "chain": [{k: hostile for k in ("principle", "critique_request", "critique", "revision_request", "revision")}],
    }
    for html in (
        data.job_html(job),
        distill.status_html(job),
        compare.status_html(job),
        samples.chain_html(sample),
        samples.badges_html(sample),
    ):
        assert "<script" not in html and "<img" not in html, html


# --------------------------------------------------------------------------- tokens


def test_token_is_redacted(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert redact(f"401 for token {TOKEN}") == "401 for token ***"


def leaky_job(ctx, config):
    """A job whose library call fails with the token in its message (some HTTP errors do)."""
    ctx.log.info("pushing")
    raise RuntimeError("push refused for token " + os.environ["HF_TOKEN"])


def test_token_never_reaches_the_workspace(tmp_path):
    """With HF_TOKEN set, a job that fails with the token in its error leaves no trace of it in the
    store, the job's logs or any other file of the workspace."""
    env = {**os.environ, "HF_TOKEN": TOKEN, "CTXDISTILL_HOME": str(tmp_path)}
    script = """
from ctxdistill import jobs
from ctxdistill.store import Store
store = Store()
job = jobs.submit(store, "tests.test_hostile:leaky_job", {})
assert jobs.wait(store, job, timeout=90)["state"] == "failed"
"""
    subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, check=True, timeout=150)
    store = Store(tmp_path)
    assert "push refused for token ***" in store.list_jobs()[0]["error"]
    store.close()
    leaks = [p for p in tmp_path.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert leaks == []


# ------------------------------------------------------------------ parsing and checks bounded in time and memory


def alias_bomb(levels: int = 9) -> str:
    """A few hundred bytes whose principle id expands to 9**levels strings."""
    lines = ['l0: &l0 ["x","x","x","x","x","x","x","x","x"]']
    lines += [f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines) + f"\nname: bomb\nprinciples:\n  - id: *l{levels - 1}\n    text: hi\n"


@pytest.mark.parametrize(
    "text, message",
    [
        (alias_bomb(), "aliases"),
        ("[" * 200_000 + "]" * 200_000, "nested too deeply"),
        ("name: " + "{a: " * 50_000 + "x" + "}" * 50_000, "nested more than"),
        ("- " * 100_000 + "x", "nested more than"),
        ("name: x\nprinciples: []\n#" + "x" * (2 << 20), "at most 1 MB"),
        ("name: x\nprinciples:\n  - id: " + "1" * 5000 + "\n    text: y\n", "not valid YAML"),
        ('{"name": ' + "1" * 5000 + ', "principles": []}', "not valid JSON"),
    ],
)
def test_hostile_constitution_texts_are_refused_at_once(text, message):
    import time

    from ctxdistill import constitution as cmod

    start = time.perf_counter()
    with pytest.raises(cmod.ConstitutionError, match=message) as raised:
        cmod.parse(text)
    assert time.perf_counter() - start < 0.5 and "\n" not in str(raised.value)


def test_a_catastrophic_regex_check_is_cut_short():
    import time

    from ctxdistill.constitution import REGEX_TIMEOUT_S, Check
    from ctxdistill.curate import sample_flags

    check = Check("regex", "(a|aa)+$")
    start = time.perf_counter()
    assert check.passes("a" * 40 + "?") is False  # timed out: not shown to pass
    assert time.perf_counter() - start < REGEX_TIMEOUT_S + 0.2
    assert check.passes("aaaa")
    flags = sample_flags({"final": "a" * 40 + "?"}, [("p1", check)])
    assert "failed_check:p1" in flags


def test_a_catastrophic_regex_does_not_hold_other_visitors(tmp_path):
    """One visitor saves an answer that their check backtracks on; another visitor's light calls go on."""
    import threading
    import time

    from ctxdistill import constitution as cmod
    from ctxdistill import curate

    text = "name: slow\nprinciples:\n  - id: p1\n    text: say a\n    check: {kind: regex, value: '(a|aa)+$'}\n"
    c = cmod.ensure_valid(cmod.parse(text))
    store = Store(tmp_path)
    cid = store.save_constitution(c.name, cmod.to_dict(c), cmod.content_hash(c))
    store.add_prompts("s", [{"text": f"q{i}"} for i in range(20)])
    ids = store.upsert_samples(
        [{"prompt_id": p["id"], "constitution_id": cid, "prompted": "a" * 40 + "?"} for p in store.get_prompts("s")]
    )
    done = threading.Event()
    worker = threading.Thread(target=lambda: (curate.refresh_flags(store, cid), done.set()))
    worker.start()
    waits = []
    while not done.is_set():
        start = time.perf_counter()
        store.list_constitution_versions()
        waits.append(time.perf_counter() - start)
        time.sleep(0.01)
    worker.join()
    assert max(waits) < 0.5 and all("failed_check:p1" in store.get_sample(i)["flags"] for i in ids)
    store.close()


# --------------------------------------------------------------------------- exports safe to open


def test_html_report_shows_markup_as_text(monkeypatch):
    from ctxdistill import report

    hostile = " ".join(XSS)
    monkeypatch.setattr(
        report,
        "report_sections",
        lambda results, tally: [
            ("Setup", f"Constitution **{hostile}** with preamble {hostile}", None),
            (
                "Principle checks",
                report.markdown_table([{"principle": hostile, "check": "<b onmouseover=alert(1)>x</b>"}]),
                None,
            ),
        ],
    )
    page = report.report({"constitution": {"name": hostile, "id": 1}}, "html")
    assert "<script" not in page and "<img" not in page and "<b onmouseover" not in page
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in page


def test_csv_export_neutralises_formulas(store):
    import csv

    from ctxdistill import curate

    cid = store.save_constitution("c", {"name": "c"}, "h")
    texts = ['=HYPERLINK("http://evil","x")', "+1+1", "-2+3", "@SUM(A1)", "\tTAB", "\rCR", "plain"]
    store.add_prompts("s", [{"text": f"prompt {t}"} for t in texts] + [{"text": "=cmd|' /C calc'!A0"}])
    prompts = store.get_prompts("s")
    for p, t in zip(prompts, texts + ["fine"]):
        store.update_sample(store.upsert_sample(p["id"], cid, prompted=t), 1, status="accepted")
    out = store.home / "x.csv"
    curate.export(store, cid, "csv", out)
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["completion"] for r in rows] == ["'" + t for t in texts[:-1]] + ["plain", "fine"]
    assert rows[-1]["prompt"] == "'=cmd|' /C calc'!A0"


# --------------------------------------------------------------------------- tokens in errors

HUB_ECHO = f"403 Forbidden: request headers were {{'Authorization': 'Bearer {TOKEN}'}}"


def test_hub_errors_are_redacted_even_when_the_token_is_not_in_the_environment(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert TOKEN not in redact(HUB_ECHO) and "Bearer ***" in redact(HUB_ECHO)
    assert redact("Authorization: token-from-a-cached-login") == "Authorization: ***"


def test_review_export_error_hides_the_token(tmp_path, monkeypatch):
    from ctxdistill import curate

    ctx = AppContext(home=tmp_path, demo=False)
    blocks = build_app(ctx)
    cid = ctx.store.save_constitution("c", {"name": "c"}, "h")

    def echoing_hub(*args, **kwargs):
        raise RuntimeError(HUB_ECHO)

    monkeypatch.setattr(curate, "export", echoing_hub)
    export = next(
        f.fn
        for f in blocks.fns.values()
        if f.fn is not None and f.fn.__name__ == "on_export" and f.fn.__module__ == "ctxdistill.ui.samples"
    )
    _, message = export(
        SimpleNamespace(session_hash="v"), "datasets", "me/data", cid, "(any)", "all", "(any)", "(any)", "", 0, 0
    )
    assert "Not exported" in message and TOKEN not in message


def test_cli_hub_export_error_is_one_redacted_line(tmp_path, monkeypatch, capsys):
    from ctxdistill import cli, curate

    monkeypatch.setenv("HF_TOKEN", "hf_AnotherTokenInTheEnvironment99")
    monkeypatch.setattr(curate, "export", lambda *a, **kw: (_ for _ in ()).throw(OSError(HUB_ECHO)))
    store = Store(tmp_path)
    store.save_constitution("c", {"name": "c"}, "h")
    store.close()
    code = cli.main(
        [
            "export",
            "--workspace",
            str(tmp_path),
            "--constitution",
            "1",
            "--format",
            "datasets",
            "--out",
            str(tmp_path / "out"),
            "--hub-id",
            "me/data",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: OSError: 403") and err.count("\n") == 1
    assert TOKEN not in err and "Traceback" not in err
