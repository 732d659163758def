"""The preference stage in the browser: make pairs from a run's student (tiny model, AI feedback), accept
them with the keyboard, start a DPO run on them and find it among the students in Compare."""

import json
import time

import pytest

from ctxdistill.store import Store
from tests.e2e.conftest import seed_run, start_app, stop_app

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pairs_app(tmp_path_factory, tiny_checkpoint, tiny_model):
    workspace = tmp_path_factory.mktemp("e2e-pairs")
    with Store(workspace) as store:
        cid, run = seed_run(store, tiny_checkpoint, tiny_model)
        config = {**store.get_job(run)["config"], "quantize": "none", "precision": "fp32"}
        store.update_job(run, config=config)
        # the held-out answer the run kept (a DPO run measures the KL to the teacher along it)
        heldout = [{"prompt": "Say hi", "answer": [40, 41, 42]}]
        (store.runs_dir / str(run) / "data.json").write_text(json.dumps({"train": [], "heldout": heldout}))
    proc, url = start_app(workspace, env={"CTXDISTILL_MODEL": str(tiny_checkpoint)})
    yield url, workspace, cid, run
    stop_app(proc)


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


def test_make_accept_train_and_compare(browser, pairs_app):
    url, workspace, cid, run = pairs_app
    page = browser.new_context(viewport={"width": 1400, "height": 1400}).new_page()
    page.set_default_timeout(60_000)
    page.goto(url)
    page.get_by_role("tab", name="Review", exact=True).click()
    page.locator("#review-pairs").get_by_text("Preference pairs").first.click()
    page.locator("#review-pairs").get_by_text("Make pairs", exact=True).first.click()
    page.locator("#pairs-run input").fill(str(run))
    page.locator("#pairs-sources textarea, #pairs-sources input").first.fill("feedback")
    page.locator("#pairs-threshold input").fill("0")
    page.locator("#pairs-limit input").fill("3")
    page.locator("#pairs-make").click()
    job = wait_for_job(workspace, "prefs")
    assert job["state"] == "done", job["error"]
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
    page.locator("#dpo-run input").fill(str(run))
    page.locator("#dpo-steps input").fill("2")
    page.locator("#dpo-start").click()
    tuned = wait_for_job(workspace, "dpo")
    assert tuned["state"] == "done", tuned["error"]
    page.goto(url)
    page.get_by_role("tab", name="Compare").click()
    page.locator("#eval-runs input").click()
    page.get_by_role("option", name=f"job {tuned['id']} · DPO from run {run}").first.wait_for()
