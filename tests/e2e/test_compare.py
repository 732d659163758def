"""The Compare tab: an evaluation of two tiny-model runs is in the store; cast blind A/B votes with the
keyboard, see the tally, reload and find the votes kept. Then the preference stage: make pairs from
the run's student (tiny model, AI feedback), accept them with the keyboard, start a DPO run on them
and find it among the students in Compare."""

import json
import time

import pytest

from ctxdistill.store import Store
from tests.e2e.conftest import seed_run, set_number, start_app, stop_app
from tests.test_evaluate import PROMPTS

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def compare_url(tmp_path_factory, tiny_checkpoint, tiny_model):
    from ctxdistill import eval_config, evaluate

    workspace = tmp_path_factory.mktemp("e2e-compare")
    with Store(workspace) as store:
        cid, run = seed_run(store, tiny_checkpoint, tiny_model)
        config = {**store.get_job(run)["config"], "quantize": "none", "precision": "fp32"}
        store.update_job(run, config=config)
        # the held-out answer the run kept (a DPO run measures the KL to the teacher along it)
        heldout = [{"prompt": "Say hi", "answer": [40, 41, 42]}]
        (store.runs_dir / str(run) / "data.json").write_text(json.dumps({"train": [], "heldout": heldout}))
        store.add_prompts("toy", [{"text": p, "split": "heldout"} for p in PROMPTS])
        cfg = eval_config.EvalConfig(
            constitution_id=cid,
            runs=[run],
            prompt_set="toy",
            model=str(tiny_checkpoint),
            sample_tokens=6,
            n_boot=100,
            influence_prompts=2,
        )
        store.save_eval(None, cid, [run], evaluate.run(cfg, store))
    proc, url = start_app(workspace, env={"CTXDISTILL_MODEL": str(tiny_checkpoint)})
    yield url, workspace, cid, run
    stop_app(proc)


def open_tab(page, url):
    page.goto(url)
    page.get_by_role("tab", name="Compare").click()
    page.wait_for_function("document.querySelector('#eval-pick input')?.value.includes('eval 1')")
    page.wait_for_selector("#ab-prompt >> text=Prompt:")


def test_blind_votes_with_the_keyboard(browser, compare_url):
    url, workspace, _, _ = compare_url
    context = browser.new_context(viewport={"width": 1400, "height": 1400})
    page = context.new_page()
    page.set_default_timeout(60_000)
    open_tab(page, url)
    page.wait_for_selector("#ab-tally >> text=No votes yet")
    page.wait_for_selector("#ab-progress >> text=0 of 6 reviewed")
    page.wait_for_selector("#scoreboard >> text=run 1")
    # above the scoreboard: the run's answers passing every check against the teacher's
    page.wait_for_selector("#eval-results-mismatch >> text=the teacher: checks")
    shown = []
    for key, count in (("1", 1), ("2", 2), ("3", 3)):
        shown.append(page.locator("#ab-prompt").inner_text())
        page.locator("body").click(position={"x": 5, "y": 5})  # focus outside any text field
        page.keyboard.press(key)
        page.wait_for_selector(f"#ab-progress >> text={count} of 6 reviewed")
    assert len(set(shown)) == 3  # each vote moves on to the next prompt
    tally = page.locator("#ab-tally").inner_text()
    assert "3 votes" in tally and "tie 1" in tally
    with Store(workspace) as store:
        votes = store.list_votes(1)
    assert [v["choice"] for v in votes] == ["a", "b", "tie"]
    assert {v["a_is"] for v in votes} <= {"teacher", "run 1"}

    page.reload()
    open_tab(page, url)
    page.wait_for_selector("#ab-progress >> text=3 of 6 reviewed")
    assert "3 votes" in page.locator("#ab-tally").inner_text()
    context.close()


def test_principle_influence_from_the_constitution_tab(browser, compare_url):
    url, *_ = compare_url
    context = browser.new_context(viewport={"width": 1400, "height": 1400})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(url)
    page.wait_for_function("document.querySelector('#c-name textarea, #c-name input')?.value === 'pirate'")
    page.locator("#c-influence").click()
    page.wait_for_function("document.querySelector('#influence-table')?.innerText.includes('(preamble)')")
    assert page.get_by_role("tab", name="Compare").get_attribute("aria-selected") == "true"
    table = page.locator("#influence-table").inner_text()
    assert all(name in table for name in ("arr", "voice", "(preamble)"))
    page.wait_for_selector("#influence-plot img, #influence-plot canvas, #influence-plot svg")
    context.close()


def wait_for_job(workspace, kind: str, timeout: float = 600) -> dict:
    """The first finished job of ``kind``; on a timeout, every job's state and the server's last lines."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        with Store(workspace) as store:
            jobs = store.list_jobs()
        done = [j for j in jobs if j["kind"] == kind and j["state"] in ("done", "failed", "cancelled")]
        if done:
            return done[0]
        time.sleep(1)
    states = [(j["id"], j["kind"], j["state"], j["message"]) for j in jobs]
    raise TimeoutError(f"no {kind} job finished: {states}; {(workspace / 'server.log').read_text()[-1500:]}")


def test_make_accept_train_and_compare(browser, compare_url):
    url, workspace, cid, run = compare_url
    page = browser.new_context(viewport={"width": 1400, "height": 1400}).new_page()
    page.set_default_timeout(60_000)
    page.goto(url)
    page.get_by_role("tab", name="Review", exact=True).click()
    page.locator("#review-pairs").get_by_text("Preference pairs").first.click()
    page.locator("#review-pairs").get_by_text("Make pairs", exact=True).first.click()
    filled = "document.querySelector('{} input')?.value === '{}'"
    page.wait_for_function(filled.format("#pairs-run", run))  # the version's newest distilled run
    set_number(page, "#pairs-run input", str(run))
    page.locator("#pairs-sources textarea, #pairs-sources input").first.fill("feedback")
    page.locator("#pairs-threshold input").fill("0")
    page.locator("#pairs-limit input").fill("3")
    page.locator("#pairs-make").click()
    job = wait_for_job(workspace, "prefs")
    assert job["state"] == "done", job["error"]
    page.wait_for_selector("#pairs-job >> text=pairs made from 3 prompts")  # the line followed the job
    page.locator("#pairs-reload").click()
    page.wait_for_selector("#pairs-position >> text=Pair 1 of 3")
    for n in range(3):
        page.locator("body").click(position={"x": 5, "y": 5})  # focus outside any text field
        page.keyboard.press("y")
        if n < 2:
            page.wait_for_selector(f"#pairs-position >> text=Pair {n + 2} of 3")
    deadline = time.time() + 30
    while time.time() < deadline:
        with Store(workspace) as store:
            if store.count_pairs(constitution_id=cid)["accepted"] == 3:
                break
        time.sleep(0.5)
    else:
        raise AssertionError("the keys did not accept the three pairs")
    page.get_by_text("Train on the accepted pairs (DPO)").first.click()
    page.wait_for_function(filled.format("#dpo-run", run))
    set_number(page, "#dpo-run input", str(run))
    set_number(page, "#dpo-steps input", "2")
    page.locator("#dpo-start").click()
    tuned = wait_for_job(workspace, "dpo")
    assert tuned["state"] == "done", tuned["error"]
    page.wait_for_selector(f"#pairs-job >> text=preference run {tuned['id']}")
    page.wait_for_selector("#dpo-plot img")  # its curves: loss and margin, accuracy, KL to the teacher
    page.goto(url)
    page.get_by_role("tab", name="Compare").click()
    page.locator("#eval-runs input").click()
    page.get_by_role("option", name=f"job {tuned['id']} · DPO from run {run}").first.wait_for()
