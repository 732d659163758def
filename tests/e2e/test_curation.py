"""The Review tab driven by the keyboard only: accept, reject, move, edit and save; the counters
move and every action is in the store at once. A second tab's stale action is refused. The Data
tab starts a sampling job (tiny model) and shows it finish. A job's new sample joins the open
queue without a reload."""

import re
import time

import pytest

from ctxdistill import curate
from ctxdistill.store import Store
from tests.conftest import save_version

pytestmark = pytest.mark.e2e

ANSWERS = ["Arr! Paris, matey.", "", "Hello. " * 12, "Arr! Boil it, matey.", "Plain answer.", "Arr! Aye, matey."]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("review-ws")
    with Store(home) as store:
        cid = save_version(store)
        store.add_prompts("review", [{"text": f"Question {i}?"} for i in range(len(ANSWERS))])
        for p, text in zip(store.get_prompts("review"), ANSWERS):
            store.upsert_sample(p["id"], cid, 0, prompted=text, unprompted="plain")
        curate.refresh_flags(store, cid)
    return home


@pytest.fixture(scope="module")
def app_url(home_url):
    return home_url


def counters(page, **expected):
    """Wait until every named counter shows its value (the counters also refresh on a timer)."""
    checks = " && ".join(
        f"document.querySelector('#review-counters .{k}')?.innerText === '{v}'" for k, v in expected.items()
    )
    page.wait_for_function(checks, timeout=20_000)


def wait_text(page, selector: str, text: str):
    page.wait_for_selector(f"{selector} >> text={text}", timeout=20_000)


def open_review(page, pending: int):
    page.get_by_role("tab", name="Review", exact=True).click()
    wait_text(page, "#review-position", f"Sample 1 of {pending}")
    page.locator("#review-shortcuts").click()  # focus on the page, not in a text box


def test_keyboard_review_moves_the_counters(page, home):
    open_review(page, 6)
    counters(page, reviewed=0, total=6)
    assert "empty answer" not in page.locator("#review-badges").inner_text()
    page.keyboard.press("a")
    wait_text(page, "#review-position", "Sample 2 of 6")
    counters(page, accepted=1, reviewed=1)
    assert "empty answer" in page.locator("#review-badges").inner_text()
    page.keyboard.press("r")
    wait_text(page, "#review-position", "Sample 3 of 6")
    counters(page, rejected=1, rate="50%")
    page.keyboard.press("k")
    wait_text(page, "#review-position", "Sample 2 of 6")
    page.keyboard.press("ArrowRight")
    wait_text(page, "#review-position", "Sample 3 of 6")

    page.keyboard.press("e")  # edit the final text in place
    page.keyboard.press("Control+A")
    page.keyboard.type("Arr! Edited by keyboard, matey.")
    page.keyboard.press("Control+Enter")
    wait_text(page, "#review-msg", "edit")
    page.keyboard.press("Escape")
    page.keyboard.press("a")
    wait_text(page, "#review-position", "Sample 4 of 6")
    counters(page, accepted=2, reviewed=3)

    with Store(home) as store:
        by_text = {s["prompt"]: s for s in store.list_samples()}
    assert by_text["Question 0?"]["status"] == "accepted" and by_text["Question 1?"]["status"] == "rejected"
    edited = by_text["Question 2?"]
    assert edited["status"] == "accepted" and edited["edited"] and edited["final"] == "Arr! Edited by keyboard, matey."
    assert "repetition" not in edited["flags"]  # flags follow the edit


def test_second_tab_is_told_and_nothing_is_lost(page, browser, app_url, home):
    open_review(page, 3)  # pending samples only: starts at Question 3
    other = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    other.set_default_timeout(60_000)
    other.goto(app_url)
    open_review(other, 3)
    page.keyboard.press("a")
    wait_text(page, "#review-position", "Sample 2 of 3")
    other.keyboard.press("r")  # the same sample, at the version it read
    wait_text(other, "#review-msg", "Changed in another tab")
    assert "accepted" in other.locator("#review-badges").inner_text()  # reloaded as it is now
    with Store(home) as store:
        assert {s["prompt"]: s["status"] for s in store.list_samples()}["Question 3?"] == "accepted"
    other.context.close()

    page.get_by_text("Export accepted samples").click()
    page.locator("#review-export").click()
    wait_text(page, "#review-export-msg", "Exported 3 accepted samples")
    page.wait_for_selector("#review-export-file a")  # the zip with the JSONL and its manifest


def test_data_tab_imports_and_runs_a_sampling_job(page, tmp_path):
    page.get_by_role("tab", name="Data", exact=True).click()
    page.wait_for_function("document.querySelector('#data-sets')?.innerText.includes('default')")
    page.get_by_text("Import prompts").click()
    (tmp_path / "mine.csv").write_text("id,question\n1,Why is the sky blue?\n2,Why is the sky blue?\n3,What is rust?\n")
    page.locator("#data-upload input[type=file]").set_input_files(str(tmp_path / "mine.csv"))
    wait_text(page, "#data-import-msg", "3 records; columns: id, question")
    page.wait_for_function("document.querySelector('#data-column input')?.value === 'question'")  # guessed
    page.locator("#data-import").click()
    wait_text(page, "#data-import-msg", "Added 2 prompts to mine (1 duplicates")
    page.locator("#gen-limit input").fill("3")
    page.locator("#gen-max-new-tokens input").fill("4")
    page.locator("#gen-start").click()
    page.wait_for_selector("#data-job-status .job-state >> text=done", timeout=90_000)
    assert "Done." in page.locator("#data-job-status").inner_text()
    page.get_by_role("tab", name="Review", exact=True).click()
    page.locator("#review-reload").click()  # the new samples join the queue
    counters(page, total=9)


def test_review_queue_follows_a_job_without_reload(page, home):
    """A job adds a sample while the Review tab is open: it joins the queue through the page's one
    poll (no Reload), the sample on screen stays, and its revision, worse than its start, is flagged."""
    page.get_by_role("tab", name="Review", exact=True).click()
    page.wait_for_selector("#review-position >> text=Sample 1 of")
    page.locator("#review-shortcuts").click()
    n = int(re.search(r"of (\d+)", page.locator("#review-position").inner_text())[1])
    shown = page.locator("#review-prompt textarea").input_value()
    cid = int(re.search(r"v(\d+)", page.locator("#review-version input").input_value())[1])
    with Store(home) as store:
        store.add_prompts("follow", [{"text": "How do volcanoes form?"}])
        job = store.create_job("revise", {"constitution_id": cid})
        store.update_job(job, state="running")
    page.get_by_role("tab", name="Data", exact=True).click()  # a job started elsewhere: seen on a tab switch
    page.get_by_role("tab", name="Review", exact=True).click()
    with Store(home) as store:
        loop = {
            "principle": "arr",
            "critique_request": "",
            "critique": "",
            "revision_request": "",
            "revision": "The answer to the question is: " * 6,
            "cut_off": False,
        }
        start = "Arr! Volcanoes form where magma rises through the crust, matey."
        store.upsert_sample(
            store.get_prompts("follow")[0]["id"],
            cid,
            0,
            prompted=start,
            unprompted="Magma.",
            chain=[loop],
            meta={"revise_start": "prompted"},
        )
        curate.refresh_flags(store, cid)
        store.update_job(job, progress_done=1, progress_total=1, message="1/1 rounds")
    wait_text(page, "#review-position", f"Sample 1 of {n + 1}")
    assert page.locator("#review-prompt textarea").input_value() == shown  # the sample on screen stayed
    with Store(home) as store:
        store.update_job(job, state="done", finished_at=time.time(), message="done")
    page.locator("#review-shortcuts").click()
    for k in range(2, n + 2):
        page.keyboard.press("j")
        wait_text(page, "#review-position", f"Sample {k} of {n + 1}")
    assert page.locator("#review-prompt textarea").input_value() == "How do volcanoes form?"
    assert "revision worse than its start" in page.locator("#review-badges").inner_text()
