"""The stale-run notice and the re-bake offer in a real browser: a finished run trained on v1 of the
pirate constitution, then v2 edits one principle. Distill and Compare both say the run is stale, and
the offer fills the Distill form's version and "Continue from run" fields."""

import copy

import pytest

from tests.e2e.conftest import seed_run, start_app, stop_app

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stale_app(tmp_path_factory, tiny_checkpoint, tiny_model):
    from ctxdistill.constitution import content_hash, from_row, to_dict
    from ctxdistill.store import Store

    workspace = tmp_path_factory.mktemp("e2e-rebake")
    with Store(workspace) as store:
        v1, run = seed_run(store, tiny_checkpoint, tiny_model)
        c = copy.deepcopy(from_row(store.get_constitution(v1)))
        next(p for p in c.principles if p.id == "matey").text = 'Ye always call the user "captain", arr!'
        v2 = store.save_constitution(c.name, to_dict(c), content_hash(c), message="captain")
    proc, url = start_app(workspace, env={"CTXDISTILL_MODEL": str(tiny_checkpoint)})
    yield url, v1, v2, run
    stop_app(proc)


def test_a_stale_run_is_named_and_the_rebake_fills_the_form(browser, stale_app):
    url, v1, v2, run = stale_app
    notice = f"run {run} was trained on v{v1}; v{v2} changed 1 principle"
    context = browser.new_context(viewport={"width": 1400, "height": 1200})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(url)

    page.get_by_role("tab", name="Compare").click()
    page.locator("#eval-runs input").click()
    page.get_by_role("option", name=f"job {run}").first.click()
    page.locator("#eval-stale").get_by_text(notice).wait_for()

    page.get_by_role("tab", name="Distill").click()
    page.locator("#train-run input").click()
    page.get_by_role("option", name=f"job {run}").first.click()
    page.locator("#train-stale").get_by_text(notice).wait_for()
    page.locator("#train-rebake").click()
    page.wait_for_function(f"document.querySelector('#train-from-run input')?.value === '{run}'")
    assert f"v{v2}" in page.locator("#train-version input").input_value()
    context.close()
