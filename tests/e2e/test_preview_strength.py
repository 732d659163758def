"""The strength dial in the Preview tab: moving it re-answers the student column at the new
strength; at 0 the student is the base model. A finished run of the tiny model is seeded."""

import pytest

from tests.e2e.conftest import seed_run, start_app, stop_app

pytestmark = pytest.mark.e2e

STUDENT = "document.querySelector('#student textarea').value"


@pytest.fixture(scope="module")
def preview_url(tmp_path_factory, tiny_checkpoint, tiny_model):
    from ctxdistill.store import Store

    workspace = tmp_path_factory.mktemp("e2e-strength")
    with Store(workspace) as store:
        seed_run(store, tiny_checkpoint, tiny_model)
    proc, url = start_app(workspace, env={"CTXDISTILL_MODEL": str(tiny_checkpoint)})
    yield url
    stop_app(proc)


def student_text(page, other_than: str) -> str:
    page.wait_for_function(
        f"(() => {{ const v = {STUDENT}; return v && v !== {other_than!r}"
        " && !v.startsWith('generating') && !v.startsWith('pick'); })()"
    )
    return page.evaluate(STUDENT)


def test_moving_the_dial_changes_the_student_column(browser, preview_url):
    context = browser.new_context(viewport={"width": 1400, "height": 1200})
    page = context.new_page()
    page.set_default_timeout(90_000)
    page.goto(preview_url)
    page.get_by_role("tab", name="Preview").click()
    page.locator("#student-run input").click()
    page.get_by_role("option", name="job 1").first.click()
    page.locator("#prompt textarea").fill("How do I boil an egg?")
    page.locator("#run-preview").click()
    as_trained = student_text(page, "")
    base = page.evaluate("document.querySelector('#unprompted textarea').value")
    assert as_trained != base
    dial = page.locator("#student-strength input[type=number]")
    dial.fill("0")
    dial.press("Tab")  # the dial's release: the student column again
    at_zero = student_text(page, as_trained)
    assert at_zero == base  # strength 0 is the base model (greedy answers)
    context.close()
