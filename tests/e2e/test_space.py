"""The app as a Space sees it (SPACE_ID set, the hub unreachable, no embedded model): the caps and
a clear message instead of a hang. And markup fed through every view stays text in a real browser."""

from __future__ import annotations

import time

import pytest

from ctxdistill import constitution as cmod
from ctxdistill.store import Store
from tests.e2e.conftest import start_app, stop_app

pytestmark = pytest.mark.e2e

SCRIPT = "<script>window.__xss=1</script>"
IMG = '<img src=x onerror="window.__xss=2">'
HOSTILE = f"{SCRIPT} {IMG}"


@pytest.fixture(scope="module")
def space_url(tmp_path_factory):
    root = tmp_path_factory.mktemp("space")
    env = {
        "SPACE_ID": "someone/ctxdistill",
        "HF_HUB_OFFLINE": "1",
        "CTXDISTILL_EMBEDDED": "0",
        "CTXDISTILL_MODELS": str(root / "models"),
        "HF_HOME": str(root / "hf"),
    }
    proc, url = start_app(root / "ws", env=env)
    yield url
    stop_app(proc)


def test_space_shows_caps_and_a_clear_message_instead_of_a_hang(browser, space_url):
    page = browser.new_page()
    page.set_default_timeout(30_000)
    page.goto(space_url)
    banner = page.locator("#demo-banner")
    banner.get_by_text("Duplicate this Space").wait_for()
    text = banner.inner_text()
    assert "Public demo" in text and "40 training steps" in text and "64 new tokens" in text
    assert "hub cannot be reached" in text
    assert (
        banner.locator("a").get_attribute("href") == "https://huggingface.co/spaces/someone/ctxdistill?duplicate=true"
    )
    page.get_by_role("tab", name="Preview").click()
    page.locator("#prompt textarea").fill("How do I boil an egg?")
    start = time.monotonic()
    page.locator("#run-preview").click()
    page.get_by_text("hub cannot be reached").last.wait_for(timeout=20_000)
    assert time.monotonic() - start < 20
    page.close()


def seed_hostile(home) -> None:
    """Markup in every place a user or the model can put text: constitution, draft, prompt set,
    samples (answers, final text, note, critique chain) and job messages."""
    store = Store(home)
    c = cmod.from_dict(
        {
            "name": "x" + IMG,
            "description": HOSTILE,
            "preamble": HOSTILE,
            "principles": [{"id": "p1", "text": HOSTILE, "critique": HOSTILE, "revision": HOSTILE}],
        }
    )
    cid = store.save_constitution(c.name, cmod.to_dict(c), cmod.content_hash(c), message=HOSTILE)
    store.save_draft(cmod.to_dict(c), cid)
    store.add_prompts("s" + IMG, [{"text": "prompt " + HOSTILE}, {"text": "held " + IMG, "split": "heldout"}])
    pid = store.get_prompts("s" + IMG)[0]["id"]
    chain = [
        {
            "principle": "p1",
            "critique_request": HOSTILE,
            "critique": HOSTILE,
            "revision_request": HOSTILE,
            "revision": "revised " + HOSTILE,
        }
    ]
    store.upsert_sample(
        pid,
        cid,
        0,
        prompted="teacher " + HOSTILE,
        unprompted="base " + HOSTILE,
        chain=chain,
        note=HOSTILE,
        flags=["failed_check:" + IMG],
    )
    for kind in ("generate", "train"):
        job = store.create_job(kind, {"constitution_id": cid, "steps": 2, "loss": IMG})
        store.update_job(job, state="failed", message=HOSTILE, error=HOSTILE, finished_at=time.time())
    store.close()


def test_markup_stays_text_in_every_view(browser, tmp_path):
    seed_hostile(tmp_path)
    proc, url = start_app(tmp_path)
    try:
        page = browser.new_page()
        page.set_default_timeout(30_000)
        page.goto(url)
        page.locator("#rendered textarea").wait_for()
        page.wait_for_function("document.querySelector('#rendered textarea').value.includes('onerror')")
        for tab in ("Constitution", "Preview", "Data", "Review", "Distill"):
            if page.get_by_role("tab", name=tab, exact=True).count():
                page.get_by_role("tab", name=tab, exact=True).click()
                page.wait_for_timeout(2500)  # timers poll, tables and HTML views render
                assert page.evaluate("window.__xss") is None, f"markup ran in the {tab} tab"
        # the markup is there, as text
        assert page.get_by_text("onerror", exact=False).count() > 0
        assert page.evaluate("window.__xss") is None
        page.close()
    finally:
        stop_app(proc)
