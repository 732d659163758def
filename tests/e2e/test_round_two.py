"""What a newcomer hit, round two (issue 25), in the browser: version menus that follow the newest
version unless picked, job buttons that follow the job, the curation offered to Distill, Preview's
empty prompt and greedy settings, and an empty Compare page. The store is written directly (no
worker runs); the constitution is written here."""

import pytest

from ctxdistill import constitution as cmod
from ctxdistill.store import Store
from tests.e2e.conftest import tab

pytestmark = pytest.mark.e2e

HAIKU = """name: haiku
principles:
  - id: lines
    text: Answer in three short lines.
  - id: nature
    text: Mention something from nature.
"""


def save(store, message: str) -> int:
    c = cmod.parse(HAIKU.replace("nature.", f"nature ({message})."), "yaml")
    return store.save_constitution(c.name, cmod.to_dict(c), cmod.content_hash(c), message=message)


@pytest.fixture(scope="module")
def home(tmp_path_factory, tiny_checkpoint, tiny_model):
    from tests.test_evaluate import _adapter

    home = tmp_path_factory.mktemp("round-two-ws")
    with Store(home) as store:
        v1 = save(store, "first")
        store.add_prompts("mine", [{"text": f"Question {i}?"} for i in range(3)])
        for i, p in enumerate(store.get_prompts("mine")):
            sid = store.upsert_sample(p["id"], v1, 0, prompted=f"Leaves fall {i}", unprompted="plain")
            store.update_sample(sid, store.get_sample(sid)["version"], status="accepted")
        v2 = save(store, "second")
        # a finished run of the tiny model with an adapter: the student Preview can talk to
        run = store.create_job("train", {"model": str(tiny_checkpoint), "constitution_id": v2, "loss": "kl"})
        store.update_job(run, state="done")
        _adapter(tiny_model, store.runs_dir / str(run) / "adapter", 0.5)
    return home


@pytest.fixture
def page(home_page):
    return home_page


def menu(page, elem_id: str, startswith: str):
    page.wait_for_function(f"document.querySelector('#{elem_id} input')?.value.startsWith('{startswith}')")


def test_version_menus_follow_the_newest_version_unless_picked(page, home):
    for name, elem_id in (("Data", "gen-version"), ("Distill", "train-version"), ("Compare", "eval-version")):
        tab(page, name)
        menu(page, elem_id, "v2 ")
    tab(page, "Distill")
    page.locator("#train-version input").click()  # Distill: the visitor picks v1
    page.get_by_role("option", name="v1 · haiku · first").click()
    page.wait_for_selector("#train-curation >> text=has 3 accepted samples")  # the review is offered
    assert page.locator("#train-data input[value=accepted]").is_checked()
    save(Store(home), "third")
    tab(page, "Data")  # a tab switch polls the store
    menu(page, "gen-version", "v3 ")
    tab(page, "Distill")
    page.wait_for_timeout(1500)
    menu(page, "train-version", "v1 ")  # the pick stays
    page.reload()
    tab(page, "Distill")
    menu(page, "train-version", "v3 ")  # a reload shows the newest again
    page.wait_for_selector("#train-curation >> text=no accepted samples")
    assert page.locator("#train-data input[value=prompts]").is_checked()


def test_stop_is_idle_without_a_job_and_start_while_one_runs(page, home):
    tab(page, "Distill")
    assert page.locator("#train-stop").is_disabled() and page.locator("#train-start").is_enabled()
    store = Store(home)
    job = store.create_job("train", {"constitution_id": 1, "steps": 4, "loss": "kl"})
    store.update_job(job, state="running", progress_done=1, progress_total=4, message="step 1/4")
    tab(page, "Preview")
    tab(page, "Distill")  # a tab switch polls the store: the run is listed
    page.locator("#train-run input").click()
    page.get_by_role("option", name=f"job {job} · running").click(timeout=30_000)
    page.wait_for_function("!document.querySelector('#train-stop').disabled")
    assert page.locator("#train-start").is_disabled()
    store.update_job(job, state="cancelled", message="cancelled")
    page.wait_for_function("document.querySelector('#train-stop').disabled", timeout=15_000)
    assert page.locator("#train-start").is_enabled()


def test_preview_empty_prompt_and_greedy(page):
    tab(page, "Preview")
    page.get_by_text("Sampling", exact=True).click()
    assert page.locator("#temperature input[type=number]").is_disabled()  # Greedy is on
    page.locator("#greedy input").uncheck()
    page.wait_for_function("!document.querySelector('#temperature input[type=number]').disabled")
    page.locator("#run-preview").click()
    page.wait_for_selector("#mean-kl >> text=Type a prompt")
    assert page.locator(".error").count() == 0  # no red badge on the outputs


def test_an_empty_compare_page_shows_no_empty_plots(page):
    tab(page, "Compare")
    page.wait_for_selector("#eval-estimate >> text=held-out prompts")  # the suite's size, before Start
    assert "capability items" in page.locator("#eval-estimate").inner_text()
    assert not page.locator("#plot-scores").is_visible() and not page.locator("#scoreboard").is_visible()
    assert page.locator("#eval-stop").is_disabled()


PLOT_SRC = "(id) => document.querySelector(`#${id} img`)?.getAttribute('src') || ''"


def test_live_plots_keep_their_lines_when_the_run_ends(page, home):
    """The live plots are drawn server-side: each image carries every point sent, up to the run's end."""
    store = Store(home)
    job = store.create_job("train", {"constitution_id": 1, "steps": 6, "loss": "kl"})
    store.update_job(job, state="running", progress_done=2, progress_total=6, message="step 2/6")
    for step in range(3):
        store.log_metrics(job, step, {"loss": 1.0 - step / 10, "heldout_kl": 0.5 - step / 20})
    tab(page, "Preview")
    tab(page, "Distill")
    page.locator("#train-run input").click()
    page.get_by_role("option", name=f"job {job} · running").click(timeout=30_000)
    page.wait_for_function(f"({PLOT_SRC})('train-loss-plot').startsWith('data:image')")
    running = {plot: page.evaluate(PLOT_SRC, plot) for plot in ("train-loss-plot", "train-heldout-plot")}
    for step in range(3, 7):
        store.log_metrics(job, step, {"loss": 1.0 - step / 10, "heldout_kl": 0.5 - step / 20})
    store.update_job(job, state="done", progress_done=6, message="done")
    page.wait_for_selector("#train-status .job-state >> text=done", timeout=15_000)
    for plot, before in running.items():  # redrawn with the last steps, not left empty
        src = f"({PLOT_SRC})('{plot}')"
        page.wait_for_function(f"{src}.startsWith('data:image') && {src} !== {before!r}")
    assert not page.locator("#train-gauge-plot").is_visible()  # the run measures no gauges


def test_preview_tokens_read_as_text(page):
    tab(page, "Preview")
    page.locator("#prompt textarea").fill("Where do herons sleep?")
    page.get_by_text("Sampling", exact=True).click()
    page.locator("#max-new-tokens input[type=number]").fill("8")
    page.locator("#run-preview").click()
    page.wait_for_selector("#mean-kl >> text=Mean KL", timeout=120_000)
    gaps = page.evaluate(
        "() => [...document.querySelectorAll('#divergence .token')].map(t => getComputedStyle(t).marginLeft)"
    )
    assert gaps and set(gaps) == {"0px"}  # the pieces of a word sit together, not as separated chips


def test_enter_in_the_strength_box_answers_again(page):
    tab(page, "Preview")
    page.locator("#prompt textarea").fill("Where do herons sleep?")
    page.get_by_text("Sampling", exact=True).click()
    page.locator("#max-new-tokens input[type=number]").fill("4")
    page.locator("#student-run input").click()
    page.get_by_role("option", name="job 1").click()
    page.locator("#run-preview").click()
    page.wait_for_function("document.querySelector('#student textarea').value.length > 0", timeout=120_000)
    box = page.locator("#student-strength input[type=number]")
    box.fill("0.5")
    with page.expect_request(lambda r: "queue/join" in r.url, timeout=15_000):
        box.press("Enter")  # as dragging the dial does: the student answers at the new strength
