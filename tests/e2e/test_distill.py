"""Start a short training run from the browser with the "Make it hold" augmentations on, watch its
progress and plots, reload the page and find the run again (the tab re-attaches from the store); the
augmentations reach the run's config, log and held-out figures. Uses the tiny test model, so it is quick."""

import pytest

from tests.e2e.conftest import start_app, stop_app

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def distill_app(tmp_path_factory, tiny_checkpoint):
    from ctxdistill.constitution import content_hash, load, to_dict
    from ctxdistill.store import Store

    workspace = tmp_path_factory.mktemp("e2e-distill")
    with Store(workspace) as store:
        c = load("assets/constitutions/pirate.yaml")
        store.save_constitution(c.name, to_dict(c), content_hash(c), message="seed")
    proc, url = start_app(workspace, env={"CTXDISTILL_MODEL": str(tiny_checkpoint)})
    yield url, workspace
    stop_app(proc)


def open_tab(page, url):
    page.goto(url)
    page.get_by_role("tab", name="Distill").click()
    page.wait_for_function("document.querySelector('#train-version input')?.value.includes('pirate')")


def test_start_watch_reload(browser, distill_app):
    from ctxdistill.store import Store

    distill_url, workspace = distill_app
    context = browser.new_context(viewport={"width": 1400, "height": 1400})
    page = context.new_page()
    page.set_default_timeout(90_000)
    open_tab(page, distill_url)
    for name, value in {"steps": "6", "sample-tokens": "8", "max-prompts": "12", "batch-size": "4"}.items():
        page.locator(f"#train-{name} input").fill(value)
    page.locator("#train-quantize").get_by_text("none", exact=True).click()
    page.get_by_text("Make it hold", exact=False).first.click()
    for name, value in {"attack-share": "0.5", "multiturn-share": "0.5", "on-policy-share": "0.25"}.items():
        box = page.locator(f"#train-{name} input[type=number]")
        box.fill(value)
        box.press("Enter")
    page.locator("#train-start").click()
    page.wait_for_selector("#train-status >> text=Job 1")
    page.wait_for_selector("#train-status >> text=done", timeout=480_000)  # a shared CPU can be slow
    page.wait_for_selector("#train-status >> text=gap closed")
    page.wait_for_selector("#train-loss-plot img")
    page.wait_for_selector("#train-heldout-plot img")
    assert "done" in page.locator("#train-runs").inner_text()
    page.wait_for_function("document.querySelector('#train-log textarea').value.includes('make it hold')")
    with Store(workspace) as store:
        job = store.get_job(1)
        metrics = {m["name"] for m in store.get_metrics(1)}
    assert job["config"]["attack_share"] == 0.5 and job["config"]["multiturn_share"] == 0.5
    assert job["config"]["on_policy_share"] == 0.25
    assert {"heldout_kl_attacked", "heldout_kl_second_turn", "share_on_policy"} <= metrics

    page.reload()
    open_tab(page, distill_url)
    page.wait_for_selector("#train-status >> text=Job 1")
    page.wait_for_selector("#train-status >> text=gap closed")
    page.wait_for_selector("#train-loss-plot img")
    assert "step 6/6" in page.locator("#train-status").inner_text()

    # the run's student answers in the Preview tab's third column
    page.get_by_role("tab", name="Preview").click()
    page.locator("#student-run input").click()
    page.get_by_role("option", name="job 1").first.click()
    page.locator("#prompt textarea").fill("How do I boil an egg?")
    page.locator("#run-preview").click()
    page.wait_for_function(
        "(() => { const v = document.querySelector('#student textarea').value;"
        " return v && !v.startsWith('generating') && !v.startsWith('pick'); })()"
    )
    context.close()
