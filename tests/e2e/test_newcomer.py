"""What a newcomer saw in the browser (issue 16): lists that follow the store, labels that follow a
job, bulk actions bound to the filter and undoable, the Distill form's limits and a picked run's
settings. Jobs are written into the store directly (no worker, so no model runs): the page only
reads the store."""

import pytest

from ctxdistill import curate
from ctxdistill.store import Store
from tests.conftest import save_version
from tests.e2e.conftest import tab

pytestmark = pytest.mark.e2e

ANSWERS = ["Arr! Paris, matey.", "", "Hello. " * 12, "Arr! Boil it, matey.", "Plain answer."]
FINISHED = {
    "constitution_id": 1,
    "prompt_set": "default",
    "loss": "kl",
    "data": "prompts",
    "steps": 40,
    "batch_size": 4,
    "quantize": "none",
    "lr": 0.0005,
}


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("newcomer-ws")
    with Store(home) as store:
        cid = save_version(store, message="seed")
        store.add_prompts("review", [{"text": f"Question {i}?"} for i in range(len(ANSWERS))])
        for p, text in zip(store.get_prompts("review"), ANSWERS):
            store.upsert_sample(p["id"], cid, 0, prompted=text, unprompted="plain")
        curate.refresh_flags(store, cid)
        done = store.create_job("train", FINISHED)
        store.update_job(done, state="done", progress_done=40, progress_total=40, message="finished")
    return home


@pytest.fixture
def page(home_page):
    return home_page


def test_new_version_appears_in_every_tab_without_reloading(page):
    page.locator("#principle-text textarea").fill("Answer like a pirate, briefly.")
    page.wait_for_function("document.querySelector('#rendered textarea').value.includes('briefly')")
    page.locator("#save-message textarea").fill("brief")
    page.locator("#save").click()
    page.wait_for_selector("#save-result >> text=Saved as v2")
    for name, dropdown in (("Data", "#gen-version"), ("Distill", "#train-version"), ("Compare", "#eval-version")):
        tab(page, name)
        page.wait_for_function(f"document.querySelector('{dropdown} input')?.value.startsWith('v')")
        page.locator(f"{dropdown} input").click()
        page.get_by_role("option", name="v2 · pirate").wait_for()
        page.keyboard.press("Escape")
    page.reload()
    for name, dropdown in (
        ("Data", "#gen-version"),
        ("Distill", "#train-version"),
        ("Compare", "#eval-version"),
        ("Review", "#review-version"),
    ):
        tab(page, name)
        page.wait_for_function(f"document.querySelector('{dropdown} input')?.value.startsWith('v')")


def test_labels_follow_the_job(page, home):
    store = Store(home)
    job = store.create_job("train", {**FINISHED, "steps": 4})
    store.update_job(job, state="running", progress_done=1, progress_total=4, message="step 1/4 · measuring")
    tab(page, "Distill")
    page.locator("#train-run input").click()
    page.get_by_role("option", name=f"job {job} · running").click(timeout=30_000)  # listed by the page's poll
    page.wait_for_selector("#train-status >> text=step 1/4 · measuring")
    store.update_job(job, state="cancelled", message="cancelled")
    page.wait_for_selector("#train-status .job-state >> text=cancelled", timeout=15_000)
    assert "measuring" not in page.locator("#train-status").inner_text()  # a finished job's message goes
    assert f"job {job} · cancelled" in page.locator("#train-run input").input_value()
    assert "Job" in page.locator("#train-status").inner_text()  # job ids are shared by all kinds


def test_bulk_action_changes_what_the_filter_shows_and_undoes(page):
    tab(page, "Review")
    page.wait_for_selector("#review-position >> text=Sample 1 of 5")
    page.locator("#review-flag input").click()
    page.get_by_role("option", name="empty", exact=True).click()
    page.wait_for_selector("#review-position >> text=Sample 1 of 1")
    page.get_by_text("Bulk actions").click()
    page.locator("#review-bulk-action input").click()
    page.get_by_role("option", name="reject every pending sample with any flag").click()
    page.wait_for_selector("#review-bulk-preview >> text=would change 1 pending sample")
    page.locator("#review-bulk").click()
    page.wait_for_selector("#review-bulk-msg >> text=changed")
    assert "1 changed" in page.locator("#review-bulk-msg").inner_text()
    page.wait_for_function("document.querySelector('#review-counters .rejected')?.innerText === '1'")
    page.locator("#review-bulk-undo").click()
    page.wait_for_selector("#review-bulk-msg >> text=back to pending")
    page.wait_for_function("document.querySelector('#review-counters .rejected')?.innerText === '0'")


def test_distill_form_refuses_a_huge_batch_and_shows_a_picked_runs_settings(page, home):
    jobs_before = len(Store(home).list_jobs())
    tab(page, "Distill")
    page.locator("#train-run input").click()
    page.get_by_role("option", name="job 1 · done").click()
    page.wait_for_function("document.querySelector('#train-steps input').value === '40'")
    assert page.locator("#train-quantize input[value=none]").is_checked()
    assert page.locator("#train-batch-size input").input_value() == "4"
    page.locator("#train-batch-size input").fill("100000000")
    page.locator("#train-start").click()
    page.wait_for_selector("text=/at most 1024|less than or equal to 1024|maximum/i", timeout=30_000)
    page.wait_for_timeout(2000)
    assert len(Store(home).list_jobs()) == jobs_before  # no run started
