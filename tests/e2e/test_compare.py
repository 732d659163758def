"""The Compare tab: an evaluation of two tiny-model runs is in the store; cast blind A/B votes with the
keyboard, see the tally, reload and find the votes kept."""

import pytest

from tests.e2e.conftest import seed_run, start_app, stop_app
from tests.test_evaluate import PROMPTS

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def compare_url(tmp_path_factory, tiny_checkpoint, tiny_model):
    from ctxdistill import eval_config, evaluate
    from ctxdistill.store import Store

    workspace = tmp_path_factory.mktemp("e2e-compare")
    with Store(workspace) as store:
        cid, run = seed_run(store, tiny_checkpoint, tiny_model)
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
    yield url, workspace
    stop_app(proc)


def open_tab(page, url):
    page.goto(url)
    page.get_by_role("tab", name="Compare").click()
    page.wait_for_function("document.querySelector('#eval-pick input')?.value.includes('eval 1')")
    page.wait_for_selector("#ab-prompt >> text=Prompt:")


def test_blind_votes_with_the_keyboard(browser, compare_url):
    from ctxdistill.store import Store

    url, workspace = compare_url
    context = browser.new_context(viewport={"width": 1400, "height": 1400})
    page = context.new_page()
    page.set_default_timeout(60_000)
    open_tab(page, url)
    page.wait_for_selector("#ab-tally >> text=No votes yet")
    page.wait_for_selector("#ab-progress >> text=0 of 6 reviewed")
    page.wait_for_selector("#scoreboard >> text=run 1")
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
    url, _ = compare_url
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
