"""The Compare tab's Robustness section: start an evaluation with the suite from the form (tiny model),
and see capability, injection, what holds (override attempts, benign instructions, the second turn),
placebo and savings with their plots when it is done."""

import pytest

from tests.e2e.conftest import seed_run, start_app, stop_app
from tests.test_evaluate import PROMPTS

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def suite_url(tmp_path_factory, tiny_checkpoint, tiny_model):
    from ctxdistill.store import Store

    workspace = tmp_path_factory.mktemp("e2e-robustness")
    with Store(workspace) as store:
        _, run = seed_run(store, tiny_checkpoint, tiny_model)
        store.add_prompts(
            "toy",
            [{"text": p, "category": ("code", "science")[i % 2], "split": "heldout"} for i, p in enumerate(PROMPTS)],
        )
    proc, url = start_app(workspace, env={"CTXDISTILL_MODEL": str(tiny_checkpoint)})
    yield url, run
    stop_app(proc)


def test_the_suite_runs_from_the_compare_tab(browser, suite_url):
    url, run = suite_url
    context = browser.new_context(viewport={"width": 1400, "height": 1400})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(url)
    page.get_by_role("tab", name="Compare").click()
    page.wait_for_function("document.querySelector('#eval-version input')?.value.startsWith('v')")
    page.locator("#eval-runs input").click()
    page.get_by_role("option", name=f"job {run} ·").click()
    page.locator("#eval-prompt-set textarea, #eval-prompt-set input").first.fill("toy")
    page.locator("#eval-sample-tokens input").fill("4")
    page.locator("#eval-influence-n input").fill("0")
    assert page.locator("#eval-robustness input").is_checked()  # the suite is on by default
    page.locator("#eval-start").click()
    # the finished evaluation is picked by the page's poll, and its Robustness section filled in
    page.wait_for_function(
        "document.querySelector('#robustness-text')?.innerText.includes('Capability:')", timeout=240_000
    )
    text = page.locator("#robustness-text").inner_text()
    for words in ("Capability:", "By family", "Second turn", "Injection", "Placebo", "Savings", "code", "science"):
        assert words in text, words
    assert f"run {run}" in text
    # what holds: the headline (checks under attack, the student's minus the teacher's), what the attack adds,
    # the benign instructions followed and the second turn's gap closed in the teacher's conversation
    for words in (
        "prompted under override attempts:",
        "What the attack adds",
        "Benign instructions followed",
        f"given the teacher's conversation (the same first answer for every model), gap closed run {run}",
    ):
        assert words in text, words
    for plot in ("#plot-capability", "#plot-families", "#plot-attacks"):
        page.wait_for_selector(f"{plot} img, {plot} canvas, {plot} svg")
    context.close()
