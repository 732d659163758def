"""Demo mode: caps from the environment, and per-visitor isolation through the UI callbacks and
the API (two visitors cannot see, edit or delete each other's constitutions, samples or runs)."""

from __future__ import annotations

import inspect
import socket
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest

from ctxdistill import constitution as cmod
from ctxdistill import demo
from ctxdistill.ui.app import build_app
from ctxdistill.ui.common import AppContext, adapter_choices

PIRATE = Path(__file__).resolve().parents[1] / "assets" / "constitutions" / "pirate.yaml"
A, B = SimpleNamespace(session_hash="visitor-a"), SimpleNamespace(session_hash="visitor-b")


def visitor(ctx, name: str, request=None) -> SimpleNamespace:
    """A request from visitor `name`: the signed cookie the app's middleware gives a browser."""
    request = request or SimpleNamespace(session_hash=name)
    request.cookies = {demo.VISITOR_COOKIE: demo.sign_visitor(ctx.secret, name)}
    return request


def callback(blocks, api_name: str):
    return next(f.fn for f in blocks.fns.values() if f.api_name == api_name)


def callbacks(blocks, api_name: str) -> list:
    """Every callback whose api name is api_name, api_name_1, ... (tabs reuse function names)."""
    return [
        f.fn for f in blocks.fns.values() if f.api_name == api_name or (f.api_name or "").startswith(api_name + "_")
    ]


def tab_callback(blocks, module: str, name: str):
    """The callback `name` defined in ctxdistill/ui/<module>.py (tabs reuse names like on_export)."""
    # unwrapped: the page poll's only-changed-outputs memo would turn repeated values into skips
    return next(
        inspect.unwrap(f.fn)
        for f in blocks.fns.values()
        if f.fn is not None and f.fn.__module__ == f"ctxdistill.ui.{module}" and f.fn.__name__ == name
    )


def element(blocks, elem_id: str):
    return next(b for b in blocks.blocks.values() if getattr(b, "elem_id", None) == elem_id)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    ctx = AppContext(home=tmp_path_factory.mktemp("demo-ws"), demo=True)
    for request in (A, B):
        visitor(ctx, request.session_hash, request)
    return ctx, build_app(ctx)


def seed(ctx, owner: str) -> dict:
    """A constitution version, a prompt set, a sample and a job belonging to `owner`."""
    c = cmod.load(PIRATE)
    cid = ctx.store.save_constitution(c.name, cmod.to_dict(c), cmod.content_hash(c), message=owner, owner=owner)
    ctx.store.add_prompts(f"set-{owner}", [{"text": f"hello from {owner}"}], owner=owner)
    pid = ctx.store.get_prompts(f"set-{owner}", owner=owner)[0]["id"]
    sid = ctx.store.upsert_sample(pid, cid, 0, prompted="Arr", unprompted="Hi")
    job = ctx.store.create_job("train", {"constitution_id": cid, "steps": 1}, owner=owner, heavy=True)
    return {"constitution": cid, "sample": sid, "job": job}


# --------------------------------------------------------------------------- caps


def test_caps_come_from_the_environment_with_defaults():
    assert demo.caps({}) is None  # local mode: no caps
    assert demo.caps({"SPACE_ID": "me/app"}) == demo.DemoCaps()
    caps = demo.DemoCaps.from_env({"CTXDISTILL_DEMO_STEPS": "7", "CTXDISTILL_DEMO_UPLOAD_MB": "0.5"})
    assert (caps.steps, caps.upload_bytes, caps.max_new_tokens) == (7, 512 * 1024, demo.DemoCaps().max_new_tokens)
    assert demo.enabled({"CTXDISTILL_DEMO": "1"}) and not demo.enabled({"SPACE_ID": "x", "CTXDISTILL_DEMO": "0"})
    with pytest.raises(demo.DemoLimit, match="not a number"):
        demo.DemoCaps.from_env({"CTXDISTILL_DEMO_STEPS": "many"})


def test_caps_refuse_big_requests_with_a_pointer():
    caps = demo.DemoCaps()
    caps.check(steps=caps.steps, max_new_tokens=None)
    with pytest.raises(demo.DemoLimit, match=r"steps 41 > 40.*Duplicate this Space"):
        caps.check(steps=41)
    assert demo.duplicate_url({"SPACE_ID": "me/app"}) == "https://huggingface.co/spaces/me/app?duplicate=true"


def test_one_visitor_cannot_flood_the_queue(store):
    """Eight jobs in a second from one visitor used to start eight workers; now one runs, one waits, the
    rest are refused with how many they have and what to do, and other visitors are not held up."""
    from ctxdistill import jobs

    work = {"n": 200, "sleep": 0.05}
    first = jobs.submit(store, "tests.jobfixtures:count", work, owner="flooder")
    until(lambda: store.get_job(first)["state"] == "running")
    second = jobs.submit(store, "tests.jobfixtures:count", work, owner="flooder")
    refused = []
    for _ in range(6):
        with pytest.raises(demo.DemoLimit) as exc:
            jobs.submit(store, "tests.jobfixtures:count", work, owner="flooder")
        refused.append(str(exc.value))
    assert refused[0].startswith("You have 1 job running and 1 waiting") and "cancel one" in refused[0]
    assert [j["id"] for j in store.list_jobs(owner="flooder")] == [second, first]
    other = jobs.submit(store, "tests.jobfixtures:count", {"n": 1}, owner="someone else")
    assert jobs.wait(store, other, timeout=60)["state"] == "done"  # a light job: not behind the flooder's
    assert store.get_job(second)["state"] == "queued"  # a visitor's second job waits for their first
    jobs.cancel(store, first, grace_s=0)
    until(lambda: store.get_job(second)["state"] in ("running", "done"))


def until(predicate, timeout=60.0):
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_remote_code_never_in_demo_mode():
    assert demo.trust_remote_code(False, {}) is False
    assert demo.trust_remote_code(False, {"CTXDISTILL_TRUST_REMOTE_CODE": "1"}) is True
    assert demo.trust_remote_code(True, {"SPACE_ID": "me/app", "CTXDISTILL_TRUST_REMOTE_CODE": "1"}) is False


def test_gpu_wrapper_is_a_no_op_without_spaces():
    def f(x):
        return x + 1

    assert demo.gpu(f) is f and demo.gpu(duration=5)(f) is f


def test_preview_caps_apply_before_the_model_loads(app):
    ctx, blocks = app
    preview = callback(blocks, "preview")
    with pytest.raises(gr.Error, match="max new tokens 500 > 64"):
        preview(PIRATE.read_text(), "hi", 1, 0, 500, 0.0)
    sliders = {
        b.elem_id: b for b in blocks.blocks.values() if getattr(b, "elem_id", None) in ("max-new-tokens", "samples")
    }
    assert (
        sliders["max-new-tokens"].maximum == ctx.caps.max_new_tokens and sliders["samples"].maximum == ctx.caps.samples
    )


# --------------------------------------------------------------------------- isolation


def test_constitutions_are_private(app):
    ctx, blocks = app
    a = seed(ctx, A.session_hash)
    versions = callback(blocks, "versions")
    assert [v["id"] for v in versions(request=A)] == [a["constitution"]]
    assert versions(request=B) == []
    for diff in callbacks(blocks, "show_diff"):
        assert "Arr" in diff(a["constitution"], None, request=A)
        with pytest.raises(gr.Error, match="No constitution version"):
            diff(a["constitution"], None, request=B)
    restore = callback(blocks, "do_restore")
    with pytest.raises(gr.Error):
        restore(a["constitution"], {}, None, request=B)
    assert ctx.store.list_constitution_versions(owner=B.session_hash) == []


def test_samples_are_private(app):
    ctx, blocks = app
    a = seed(ctx, A.session_hash)
    sample, review = callback(blocks, "sample"), callback(blocks, "review")
    assert sample(a["sample"], request=A)["prompted"] == "Arr"
    with pytest.raises(gr.Error, match="No sample"):
        sample(a["sample"], request=B)
    with pytest.raises(gr.Error, match="No sample"):
        review(a["sample"], 1, "rejected", "mine now", request=B)
    assert ctx.store.get_sample(a["sample"])["status"] == "pending"
    row = ctx.store.get_sample(a["sample"])
    assert review(a["sample"], row["version"], "accepted", "", request=A)["status"] == "accepted"
    samples = callback(blocks, "samples")
    assert samples(a["constitution"], "", 10, request=B) == []


def test_runs_are_private(app):
    ctx, blocks = app
    a = seed(ctx, A.session_hash)
    with pytest.raises(gr.Error, match="No run or job"):
        ctx.job(a["job"], B)
    assert ctx.job(a["job"], A)["id"] == a["job"]
    with pytest.raises(gr.Error):
        ctx.job("../../etc", A)


def test_distill_callbacks_only_touch_the_visitors_runs(app):
    ctx, blocks = app
    a = seed(ctx, A.session_hash)
    run_dir = ctx.store.runs_dir / str(a["job"])
    (run_dir / "adapter").mkdir(parents=True)
    (run_dir / "log.txt").write_text("step 1: a's secret log line\n")
    ctx.store.log_metrics(a["job"], 1, {"loss": 1.5})
    poll = tab_callback(blocks, "distill", "poll")
    status, loss, _, _, log, runs, _ = poll(a["job"], "nothing shown yet", request=B)
    assert "No run yet" in status and loss is None and log == "" and a["job"] not in list(runs["job"])
    status, loss, _, _, log, runs, _ = poll(a["job"], "nothing shown yet", request=A)
    assert f"Job {a['job']}" in status and list(loss.axes[0].get_lines()[0].get_ydata()) == [1.5] and "secret" in log
    for name, args in (("on_resume", (a["job"],)), ("on_export", (a["job"], False, 1.0))):
        with pytest.raises(gr.Error, match="No run or job"):
            tab_callback(blocks, "distill", name)(*args, request=B)
    assert not ctx.store.get_job(a["job"])["cancel_requested"]
    assert [c[1] for c in adapter_choices(ctx, B.session_hash)] == []


def test_preview_student_is_the_visitors_own_run(app):
    ctx, blocks = app
    a = seed(ctx, A.session_hash)
    single = tab_callback(blocks, "preview", "single")
    with pytest.raises(gr.Error, match="No run or job"):
        next(single({}, "hi", a["job"], 1.0, B, True, 0.7, 0.95, 0, 8, 1))
    with pytest.raises(gr.Error, match="No run or job"):
        next(single({}, "hi", "../../etc", 1.0, A, True, 0.7, 0.95, 0, 8, 1))
    with pytest.raises(gr.Error, match="No run or job"):
        tab_callback(blocks, "preview", "restrength")("hi", a["job"], 0.5, B, True, 0.7, 0.95, 0, 8, 1)


def test_every_callback_is_given_the_request(app):
    """gradio fills a gr.Request parameter only when it is positional: one after *args stays unset."""
    _, blocks = app
    missed = [
        f.fn.__qualname__
        for f in blocks.fns.values()
        if f.fn is not None
        for p in inspect.signature(f.fn).parameters.values()
        if p.kind is p.KEYWORD_ONLY and "Request" in str(p.annotation)
    ]
    assert missed == []


def start_values(blocks, **overrides) -> dict:
    """The Distill form's {component: value} dict with some fields (by elem_id suffix) overridden."""
    fn = next(
        f
        for f in blocks.fns.values()
        if f.fn is not None and f.fn.__name__ == "on_start" and f.fn.__module__ == "ctxdistill.ui.distill"
    )
    values = {c: c.value for c in fn.inputs}
    for key, value in overrides.items():
        values[element(blocks, "train-" + key.replace("_", "-"))] = value
    return values


def test_distill_form_is_capped(app, monkeypatch):
    from ctxdistill.ui import distill

    ctx, blocks = app
    a = seed(ctx, A.session_hash)
    submitted = []
    monkeypatch.setattr(distill.jobs, "submit", lambda store, kind, cfg, owner: submitted.append(cfg) or a["job"])
    start = tab_callback(blocks, "distill", "on_start")
    assert element(blocks, "train-steps").maximum == ctx.caps.steps >= element(blocks, "train-steps").value
    assert element(blocks, "train-sample-tokens").maximum == ctx.caps.max_new_tokens
    with pytest.raises(gr.Error, match="No constitution version"):
        start(start_values(blocks, version=a["constitution"]), request=B)
    with pytest.raises(gr.Error, match="steps 41 > 40"):
        start(start_values(blocks, version=a["constitution"], steps=41), request=A)
    with pytest.raises(gr.Error, match="max new tokens 500 > 64"):
        start(start_values(blocks, version=a["constitution"], sample_tokens=500), request=A)
    with pytest.raises(gr.Error, match="prompts 1000 > 48"):
        start(start_values(blocks, version=a["constitution"], max_prompts=1000), request=A)
    ctx.store.add_prompts(
        "general", [{"text": f"general {i}", "split": "train"} for i in range(60)], owner=A.session_hash
    )
    with pytest.raises(gr.Error, match="prompts 64 > 48"):  # replay prompts are answered too: 32 + 32
        start(
            start_values(blocks, version=a["constitution"], max_prompts=32, replay_set="general", replay_fraction=0.5),
            request=A,
        )
    assert submitted == []
    start(start_values(blocks, version=a["constitution"]), request=A)  # the demo's own defaults fit its caps
    # as many train prompts as fit beside the short-answer replay they bring: 41 + 7
    assert submitted[0]["steps"] <= ctx.caps.steps and submitted[0]["max_prompts"] == 41 == ctx.caps.prompts - 7


def test_data_callbacks_only_touch_the_visitors_jobs_and_versions(app):
    ctx, blocks = app
    a = seed(ctx, A.session_hash)
    data = lambda name: tab_callback(blocks, "data", name)
    assert "No sampling or revise job" in data("show_job")(a["job"], request=B)
    assert f"Job {a['job']}" in data("show_job")(a["job"], request=A)
    for name in ("on_stop", "on_resume"):  # every tab's Stop and Resume (ui/common.py)
        with pytest.raises(gr.Error, match="No run or job"):
            tab_callback(blocks, "common", name)(a["job"], request=B)
    assert not ctx.store.get_job(a["job"])["cancel_requested"]
    with pytest.raises(gr.Error, match="No constitution version"):
        data("on_generate")(a["constitution"], "default", "", 0, 1, 32, 0.7, 0.95, 4, request=B)
    with pytest.raises(gr.Error, match="No constitution version"):
        data("on_revise")(a["constitution"], "", 1, "cycle", "unprompted", 32, 0.7, 0.95, request=B)


def test_data_forms_are_capped(app, monkeypatch):
    from ctxdistill.ui import data

    ctx, blocks = app
    a = seed(ctx, A.session_hash)
    generate = tab_callback(blocks, "data", "on_generate")
    for args, message in (
        ((0, 3, 32), "samples 3 > 2"),
        ((0, 1, 500), "max new tokens 500 > 64"),
        ((100, 1, 32), "prompts 100 > 48"),
    ):
        limit, n, max_new = args
        with pytest.raises(gr.Error, match=message):
            generate(a["constitution"], "default", "", limit, n, max_new, 0.7, 0.95, 4, request=A)
    revise = tab_callback(blocks, "data", "on_revise")
    with pytest.raises(gr.Error, match="max new tokens 500 > 64"):
        revise(a["constitution"], "", 1, "cycle", "unprompted", 500, 0.7, 0.95, request=A)
    with pytest.raises(gr.Error, match="rounds 3 > 2"):
        revise(a["constitution"], "", 3, "cycle", "unprompted", 32, 0.7, 0.95, request=A)
    assert element(blocks, "rev-rounds").maximum == ctx.caps.rounds
    assert element(blocks, "gen-max-new-tokens").maximum == element(blocks, "rev-max-new-tokens").maximum == 64
    assert element(blocks, "gen-n").maximum == ctx.caps.samples
    submitted = []
    monkeypatch.setattr(data.jobs, "submit", lambda store, kind, cfg, owner: submitted.append(cfg) or a["job"])
    generate(
        a["constitution"],
        f"set-{A.session_hash}",
        "",
        0,
        1,
        element(blocks, "gen-max-new-tokens").value,
        0.7,
        0.95,
        4,
        request=A,
    )
    assert submitted[0]["limit"] == ctx.caps.prompts  # "all" is as many as the demo allows


def test_data_import_takes_checked_uploads_only_in_demo_mode(app, tmp_path):
    ctx, blocks = app
    on_import, on_source = (tab_callback(blocks, "data", name) for name in ("on_import", "on_source"))
    assert not element(blocks, "data-dataset-path").visible
    secret = tmp_path / "server-side"
    secret.mkdir()
    (secret / "prompts.csv").write_text("prompt\nthe server's own file\n")
    for path in (str(secret), str(secret / "prompts.csv"), "/etc", "someone/a-big-hub-dataset"):
        with pytest.raises(gr.Error, match="uploaded files only"):
            on_source(None, path)
        with pytest.raises(gr.Error, match="uploaded files only"):
            on_import(None, path, "stolen", None, "(none)", 0.1, False, request=A)
    exe = tmp_path / "prompts.exe"
    exe.write_bytes(b"MZ\x90\x00")
    big = tmp_path / "big.csv"
    big.write_text("prompt\n" + "a long prompt line\n" * 200_000)
    many = tmp_path / "many.csv"
    many.write_text("prompt\n" + "".join(f"prompt number {i}\n" for i in range(60)))
    for path, message in ((exe, "not accepted"), (big, "limited")):
        with pytest.raises(gr.Error, match=message):
            on_import(str(path), "", "x", "prompt", "(none)", 0.1, False, request=A)
    msg = on_import(str(many), "", "many", "prompt", "(none)", 0.1, False, request=A)
    assert "Not imported" in msg and "prompts 60 > 48" in msg
    assert "many" not in [s["name"] for s in ctx.store.prompt_sets(owner=A.session_hash)]
    ok = tmp_path / "few.csv"
    ok.write_text("prompt\nfirst\nsecond\nthird\n")
    msg = on_import(str(ok), "", "few", "prompt", "(none)", 0.0, False, request=A)
    assert "Added **3** prompts" in msg
    # the cap is on the set: many small files do not add up past it
    part = tmp_path / "part.csv"
    part.write_text("prompt\n" + "".join(f"more prompt {i}\n" for i in range(45)))
    msg = on_import(str(part), "", "few", "prompt", "(none)", 0.0, False, request=A)
    assert "Added **45** prompts" in msg  # 3 + 45: the set is at the cap
    msg = on_import(str(ok), "", "few", "prompt", "(none)", 0.0, False, request=A)
    assert "Not imported" in msg and "prompts 51 > 48" in msg
    assert next(s["n_train"] for s in ctx.store.prompt_sets(owner=A.session_hash) if s["name"] == "few") == 48
    assert [s["name"] for s in ctx.store.prompt_sets(owner=B.session_hash)] in ([], ["default"])


def test_review_callbacks_only_touch_the_visitors_samples(app):
    ctx, blocks = app
    a = seed(ctx, A.session_hash)
    review = lambda name: tab_callback(blocks, "samples", name)
    filters = (a["constitution"], "(any)", "all", "(any)", "(any)", "", 0, 0)
    with pytest.raises(gr.Error, match="No constitution version"):
        review("principle_choices")(a["constitution"], B)
    assert review("principle_choices")(a["constitution"], A)["choices"][1:] != []
    ids, head, _, prompt, *_ = review("load_queue")(B, *filters)
    assert ids == [] and prompt == ""
    head, _, prompt, *_ = review("move")(B, [a["sample"]], 0, *filters)  # A's id in B's queue shows nothing
    assert "hello from" not in prompt
    row = ctx.store.get_sample(a["sample"])
    shown = {"id": a["sample"], "version": row["version"], "final": row["final"], "note": row["note"]}
    *_, message = review("action")(B, "B's words", "", [a["sample"]], 0, shown, *filters)
    assert "gone" in message and ctx.store.get_sample(a["sample"])["version"] == row["version"]
    for name, args in (("on_bulk", ("accept_clean",)), ("on_reflag", ([], 0)), ("on_export", ("csv", ""))):
        with pytest.raises(gr.Error, match="No constitution version"):
            review(name)(B, *args, *filters)


def test_compare_callbacks_only_touch_the_visitors_evaluations_and_runs(app):
    ctx, blocks = app
    a = seed(ctx, A.session_hash)
    b = seed(ctx, B.session_hash)
    results = {
        "constitution": {"name": "pirate", "id": a["constitution"]},
        "runs": [{"label": f"run {a['job']}"}],
        "n_prompts": 0,
        "prompts": [],
        "conditions": ["base", "teacher"],
    }
    eval_id = ctx.store.save_eval(None, a["constitution"], [a["job"]], results, owner=A.session_hash)
    compare = lambda name: tab_callback(blocks, "compare", name)
    shown = lambda name: tab_callback(blocks, "results", name)  # the Compare tab's results (ui/results.py)
    assert shown("on_pick")(eval_id, request=A)[0]["choices"] == [f"run {a['job']}"]
    assert shown("on_pick")(eval_id, request=B)[0]["choices"] == []
    assert shown("views")(eval_id, None, None, request=B) == (None,) * 5 + (gr.skip(), gr.skip())
    assert compare("show_blind")(eval_id, request=B)[0] is None
    with pytest.raises(gr.Error, match="gone"):
        compare("cast")({"eval": eval_id, "prompt": 1, "a_is": "teacher"}, "1 · A is better", request=B)
    assert ctx.store.list_votes(eval_id) == []
    with pytest.raises(gr.Error, match="Pick an evaluation"):
        compare("on_export")(eval_id, "md", request=B)
    assert "No evaluation running" in compare("poll")(a["job"], [], request=B)[0]
    start = compare("on_start")
    with pytest.raises(gr.Error, match="No constitution version"):
        start(a["constitution"], [], "default", 0, 40, 0, False, request=B)
    with pytest.raises(gr.Error, match="No run or job"):
        start(b["constitution"], [a["job"]], "default", 0, 40, 0, False, request=B)


def test_compare_form_is_capped(app, monkeypatch):
    from ctxdistill.ui import compare

    ctx, blocks = app
    a = seed(ctx, A.session_hash)
    ctx.store.add_prompts(
        "held", [{"text": f"held-out {i}", "split": "heldout"} for i in range(60)], owner=A.session_hash
    )
    start = tab_callback(blocks, "compare", "on_start")
    assert (
        element(blocks, "eval-max-prompts").maximum == element(blocks, "eval-influence-n").maximum == ctx.caps.prompts
    )
    assert element(blocks, "eval-sample-tokens").maximum == ctx.caps.max_new_tokens
    for args, message in (
        ((60, 40, 0), "prompts 60 > 48"),
        ((0, 500, 0), "max new tokens 500 > 64"),
        ((4, 40, 100), "prompts 100 > 48"),
    ):
        with pytest.raises(gr.Error, match=message):
            start(a["constitution"], [], "held", *args, False, request=A)
    submitted = []
    monkeypatch.setattr(compare.jobs, "submit", lambda store, kind, cfg, owner: submitted.append(cfg) or a["job"])
    start(a["constitution"], [], "held", 0, 40, 8, False, True, "full", request=A)
    assert submitted[0]["max_prompts"] == ctx.caps.prompts  # "all" is as many as the demo allows
    # the full robustness suite is scaled to the caps: capability items, suite and attacks
    suite = submitted[0]
    assert (
        suite["robustness"]
        and suite["capability_items"] == ctx.caps.prompts
        and suite["suite_prompts"] <= ctx.caps.prompts
    )
    assert 14 * suite["attack_prompts"] <= ctx.caps.prompts


def test_hub_push_is_off_in_demo_mode(app, monkeypatch):
    """A Space's HF_TOKEN is its owner's: no visitor may push with it, whatever the browser sends."""
    from ctxdistill import adapters

    ctx, blocks = app
    a = seed(ctx, A.session_hash)
    monkeypatch.setenv("HF_TOKEN", "hf_SpaceOwnersToken0123456789")
    pushed = []
    monkeypatch.setattr(adapters, "push_to_hub", lambda *args, **kw: pushed.append(args))
    assert not any(element(blocks, e).visible for e in ("train-push", "train-hub-id", "review-export-hub"))
    with pytest.raises(gr.Error, match="off in the public demo"):
        tab_callback(blocks, "distill", "on_push")(a["job"], "me/stolen", request=A)
    export = tab_callback(blocks, "samples", "on_export")
    with pytest.raises(gr.Error, match="off in the public demo"):
        export(A, "datasets", "me/stolen", a["constitution"], "(any)", "all", "(any)", "(any)", "", 0, 0)
    assert pushed == []


def test_local_mode_shares_one_workspace(tmp_path):
    ctx = AppContext(home=tmp_path, demo=False)
    blocks = build_app(ctx)
    seed(ctx, "")
    versions = callback(blocks, "versions")
    assert versions(request=A) == versions(request=B) != []


def test_local_mode_imports_from_a_server_path(tmp_path):
    blocks = build_app(AppContext(home=tmp_path / "ws", demo=False))
    (tmp_path / "prompts.csv").write_text("prompt\nfirst\nsecond\n")
    assert element(blocks, "data-dataset-path").visible
    column, *_, msg = tab_callback(blocks, "data", "on_source")(None, str(tmp_path / "prompts.csv"))
    assert msg.startswith("2 records")


def test_two_api_clients_are_two_visitors(app):
    """The same through HTTP: each gradio_client session is its own visitor."""
    from gradio_client import Client

    ctx, blocks = app
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    blocks.queue().launch(prevent_thread_lock=True, server_port=port, quiet=True, **ctx.server_options())
    try:
        a, b = (Client(f"http://127.0.0.1:{port}/", verbose=False) for _ in range(2))
        made = a.predict(PIRATE.read_text(), "from a", api_name="/save_version")["id"]
        assert made in [v["id"] for v in a.predict(api_name="/versions")]
        assert made not in [v["id"] for v in b.predict(api_name="/versions")]
        # refused by gradio's own choice check or, behind it, by the owner check
        with pytest.raises(Exception, match="No constitution version|not in the list of choices"):
            b.predict(made, None, api_name="/show_diff")
        with pytest.raises(Exception, match="No sample"):
            b.predict(1, api_name="/sample")
        # a reload is a new session of the same browser (its cookie): the visitor's work is still theirs
        again = Client(f"http://127.0.0.1:{port}/", verbose=False, httpx_kwargs={"cookies": dict(a.cookies)})
        assert again.session_hash != a.session_hash and made in [v["id"] for v in again.predict(api_name="/versions")]
        # replaying a's session hash, without a's cookie, gets a visitor of its own
        thief = Client(f"http://127.0.0.1:{port}/", verbose=False)
        thief.session_hash = a.session_hash
        assert made not in [v["id"] for v in thief.predict(api_name="/versions")]
        forged = Client(
            f"http://127.0.0.1:{port}/",
            verbose=False,
            httpx_kwargs={"cookies": {demo.VISITOR_COOKIE: a.cookies[demo.VISITOR_COOKIE][:-4] + "beef"}},
        )
        assert made not in [v["id"] for v in forged.predict(api_name="/versions")]
    finally:
        blocks.close()


# ------------------------------------------------------------------ every endpoint against the one table of caps

LOW_CAPS = {
    "PROMPTS": "4",
    "STEPS": "2",
    "SAMPLES": "1",
    "ROUNDS": "1",
    "MAX_NEW_TOKENS": "8",
    "BATCH_SIZE": "2",
    "GRAD_ACCUM": "1",
    "LORA_R": "4",
    "TEXT_KB": "1",
    "UPLOAD_MB": "0.001",
}
# What the endpoints that take no size from the visitor do: a fixed-size write, or work bounded by data that
# was capped when it was made.
BOUNDED = {
    "compare:cast",
    "constitution:do_save",
    "constitution:do_restore",
    "constitution:from_example",
    "constitution:new_draft",
    "constitution:do_export",
    "common:on_resume",
    "common:on_stop",
    "distill:on_resume",
    "distill:on_export",
    "distill:on_push",
    "samples:on_bulk",
    "samples:on_undo",
    "samples:on_reflag",
    "samples:on_export",
    "pairs:act",
    "pairs:on_bulk",
    "pairs:on_export",
    "compare:on_export",
    # one calibration per (quantize, precision) pair for the whole process, then arithmetic
    "distill:on_measure",
    "data:gen_estimate",
    "compare:eval_estimate",
}
# Reads: they start no work and store nothing.
READS = {
    "versions",
    "sample",
    "samples",
    "<lambda>",
    "on_load",
    "on_pick",
    "on_row",
    "poll",
    "follow",
    "show_blind",
    "views",
    "baked_views",
    "robustness_views",
    "show_diff",
    "on_source",
    "refresh_lists",
    "refresh_choices",
    "refresh_students",
    "load_queue",
    "move",
    "principle_choices",
    "principle_fields",
    "token_count",
    "version_choices",
    "on_choice",
    "on_form",
    "name_of_upload",
    "version_list",
    "run_list",
    "job_list",
    "set_lists",
    "history_lists",
    "show_job",
    "settings_of",
    "preview_bulk",
    "newest_job",
    "on_status",
    "setup.tick",
    "stale_view",
    "rebake_offer",
    "to_distill",
    "offer",
    "offer_note",
    "sampling_active",
    "job_buttons",
    "distilled_run",
}


def endpoint_key(fn) -> str:
    return (
        fn.__module__.rsplit(".", 1)[1] + ":" + fn.__qualname__.replace("build.<locals>.", "").replace(".<locals>", "")
    )


def test_every_endpoint_that_starts_work_or_stores_data_is_capped(tmp_path, monkeypatch):
    """With every cap lowered (a single sample allowed: no slider may break), each endpoint that
    starts work or stores data is called just over a cap and refuses; every other endpoint is a read."""
    for name, value in LOW_CAPS.items():
        monkeypatch.setenv(demo.ENV_PREFIX + name, value)
    ctx = AppContext(home=tmp_path / "ws", demo=True)
    blocks = build_app(ctx)
    a = visitor(ctx, "a")
    own = seed(ctx, "a")
    ctx.store.add_prompts("held", [{"text": f"held {i}", "split": "heldout"} for i in range(6)], owner="a")
    fns = {}
    for f in blocks.fns.values():
        if f.fn is not None and f.api_name:
            fns.setdefault(endpoint_key(f.fn), f.fn)
    big_text = "x" * 2000  # 2 KB > TEXT_KB=1
    big_upload = tmp_path / "big.yaml"
    big_upload.write_text("name: big\n" + "# padding\n" * 200)
    big_csv = tmp_path / "big.csv"
    big_csv.write_text("prompt\n" + "a prompt line\n" * 200)
    row = ctx.store.get_sample(own["sample"])
    shown = {"id": row["id"], "version": row["version"], "final": row["final"], "note": row["note"]}
    filters = (own["constitution"], "(any)", "all", "(any)", "(any)", "", 0, 0)
    train = lambda **over: lambda fn: fn(start_values(blocks, version=own["constitution"], **over), request=a)
    over_cap = {
        "api:save_version": lambda fn: fn("name: x\nprinciples: [a]\n#" + big_text, "", request=a),
        "api:review": lambda fn: fn(own["sample"], row["version"], "", big_text, request=a),
        "compare:measure": lambda fn: fn({}, 5, request=a),
        "compare:on_start": lambda fn: fn(own["constitution"], [], "held", 1, 9, 0, False, request=a),
        "constitution:set_top": lambda fn: fn(big_text, {}, None, None, request=a),
        "constitution:set_field": lambda fn: fn(
            big_text, {"principles": [{"id": "p1", "text": ""}]}, None, 0, request=a
        ),
        "constitution:reshape": lambda fn: fn({"name": big_text, "principles": []}, None, None, request=a),
        "constitution:from_yaml": lambda fn: fn("name: x\n#" + big_text, {}, None, request=a),
        "constitution:from_upload": lambda fn: fn(str(big_upload), {}, None, request=a),
        "data:on_import": lambda fn: fn(str(big_csv), "", "x", "prompt", "(none)", 0.1, False, request=a),
        "data:on_generate": lambda fn: fn(own["constitution"], "default", "", 0, 1, 8, 0.7, 0.95, 3, request=a),
        "data:on_revise": lambda fn: fn(own["constitution"], "", 2, "cycle", "unprompted", 8, 0.7, 0.95, request=a),
        "distill:on_start": [train(grad_accum=2), train(batch_size=3), train(lora_r=8), train(steps=3)],
        "preview:single": lambda fn: next(fn({}, big_text, None, 1.0, a, True, 0.7, 0.95, 0, 8, 1)),
        "preview:restrength": lambda fn: fn(big_text, own["job"], 1.0, a, True, 0.7, 0.95, 0, 8, 1),
        "preview:batch": lambda fn: next(fn({}, 5, "heldout", a, True, 0.7, 0.95, 0, 8, 1)),
        "preview:preview_api": lambda fn: fn(PIRATE.read_text(), "hi", 2, 0, 8, 0.0),
        "samples:action": lambda fn: fn(a, big_text, "", [own["sample"]], 0, shown, *filters),
        "pairs:on_make": lambda fn: fn(a, own["constitution"], 0, "auto", 0.1, 5, 0.25),  # 0 = as many as allowed
        "pairs:on_train": lambda fn: fn(a, own["constitution"], own["job"], 0.1, 3, 0, 0, True),
        "pairs:on_import": lambda fn: fn(a, own["constitution"], str(big_csv)),
    }
    unclassified = sorted(k for k in fns if k not in over_cap and k not in BOUNDED and k.split(":", 1)[1] not in READS)
    assert unclassified == []
    for key, calls in over_cap.items():
        for call in calls if isinstance(calls, list) else [calls]:
            with pytest.raises(gr.Error, match="Above the demo limits|uploads are limited"):
                call(fns[key])
    assert ctx.store.list_jobs(owner="a") == [ctx.store.get_job(own["job"])]  # no job was started
    assert ctx.store.get_draft("a") is None and ctx.store.get_sample(own["sample"])["note"] == ""


def test_demo_caps_must_be_positive():
    with pytest.raises(demo.DemoLimit, match="above 0"):
        demo.DemoCaps.from_env({"CTXDISTILL_DEMO_STEPS": "0"})


# --------------------------------------------------------------------------- who a visitor is


def test_a_visitor_is_their_signed_cookie_not_their_session_hash(app):
    ctx, _ = app
    assert ctx.owner(A) == "visitor-a"
    for request in (
        SimpleNamespace(session_hash="visitor-a"),  # no cookie: the hash alone is nobody
        SimpleNamespace(session_hash="x", cookies={demo.VISITOR_COOKIE: "visitor-a.forged"}),
        SimpleNamespace(session_hash="x", cookies={demo.VISITOR_COOKIE: demo.sign_visitor(b"other", "visitor-a")}),
    ):
        with pytest.raises(gr.Error, match="no valid visitor cookie"):
            ctx.owner(request)
    assert ctx.owner(SimpleNamespace(session_hash="a new page load", cookies=A.cookies)) == "visitor-a"
