"""The Distill form's "Make it hold" part: turn the three augmentations on, start a tiny run, and see
them in the run's config, its log and its plots' figures."""

import pytest

from tests.e2e.conftest import start_app, stop_app

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def hold_app(tmp_path_factory, tiny_checkpoint):
    from ctxdistill.constitution import content_hash, load, to_dict
    from ctxdistill.store import Store

    workspace = tmp_path_factory.mktemp("e2e-hold")
    with Store(workspace) as store:
        c = load("assets/constitutions/pirate.yaml")
        store.save_constitution(c.name, to_dict(c), content_hash(c), message="seed")
    proc, url = start_app(workspace, env={"CTXDISTILL_MODEL": str(tiny_checkpoint)})
    yield url, workspace
    stop_app(proc)


def test_make_it_hold_options_reach_the_run(browser, hold_app):
    from ctxdistill.store import Store

    url, workspace = hold_app
    context = browser.new_context(viewport={"width": 1400, "height": 1400})
    page = context.new_page()
    page.set_default_timeout(90_000)
    page.goto(url)
    page.get_by_role("tab", name="Distill").click()
    page.wait_for_function("document.querySelector('#train-version input')?.value.includes('pirate')")
    for name, value in {"steps": "4", "sample-tokens": "6", "max-prompts": "8", "batch-size": "4"}.items():
        page.locator(f"#train-{name} input").fill(value)
    page.locator("#train-quantize").get_by_text("none", exact=True).click()
    page.get_by_text("Make it hold", exact=False).first.click()
    for name, value in {"attack-share": "0.5", "multiturn-share": "0.5", "on-policy-share": "0.25"}.items():
        box = page.locator(f"#train-{name} input[type=number]")
        box.fill(value)
        box.press("Enter")
    page.locator("#train-start").click()
    page.wait_for_selector("#train-status >> text=done", timeout=480_000)  # a shared CPU can be slow
    page.wait_for_selector("#train-heldout-plot canvas, #train-heldout-plot svg")
    page.wait_for_function("document.querySelector('#train-log textarea').value.includes('make it hold')")
    with Store(workspace) as store:
        job = store.list_jobs(limit=None)[0]
        metrics = {m["name"] for m in store.get_metrics(job["id"])}
    assert job["config"]["attack_share"] == 0.5 and job["config"]["multiturn_share"] == 0.5
    assert job["config"]["on_policy_share"] == 0.25
    assert {"heldout_kl_attacked", "heldout_kl_second_turn", "share_on_policy"} <= metrics
    context.close()
