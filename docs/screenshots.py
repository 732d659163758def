"""Screenshots of each tab of the real app, for the README and docs/: ``docs/img/<tab>.png``.

    .venv/bin/python docs/screenshots.py            # about 10 minutes on 2 quiet CPU cores
    .venv/bin/python docs/screenshots.py --keep     # and print the workspace it made, to look around
    .venv/bin/python docs/screenshots.py --workspace DIR --tab Distill   # one tab of a workspace made before

It fills a temporary workspace with the command line (the pirate constitution, teacher answers to a few
default prompts, one critique-and-revise round, a short training run and its evaluation), starts
``ctxdistill serve`` on a free local port with that workspace, drives Debian's Chromium through
Playwright, clicks each tab and saves what it shows. The embedded model does the work; converted models
are reused from ``$CTXDISTILL_MODELS`` (default ``.cache/models``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.e2e.conftest import CHROMIUM, CHROMIUM_FLAGS, start_app, stop_app  # noqa: E402

OUT = REPO / "docs" / "img"
PIRATE = str(REPO / "assets" / "constitutions" / "pirate.yaml")
PROMPT = "How do I boil an egg?"


def ctxdistill(workspace: Path, env: dict, *args: str) -> dict:
    """Run one ``ctxdistill`` command on the workspace; its ``--json`` summary."""
    print("ctxdistill", " ".join(args), flush=True)
    cmd = [sys.executable, "-m", "ctxdistill.cli", *args, "--workspace", str(workspace), "--json"]
    done = subprocess.run(cmd, env=env, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def seed(workspace: Path, env: dict) -> None:
    """The workspace the screenshots show, made as a user would make it."""
    short = ("--max-new-tokens", "48")
    ctxdistill(workspace, env, "generate", "--constitution", PIRATE, "--prompt-set", "default", "--limit", "8", *short)
    ctxdistill(workspace, env, "revise", "--constitution", "1", "--limit", "4", "--rounds", "1", *short)
    run = ctxdistill(
        workspace, env, "train", "--constitution", "1", "--steps", "16", "--max-prompts", "32", "--eval-every", "4"
    )["job_id"]
    ctxdistill(
        workspace, env, "eval", "--constitution", "1", "--run", str(run), "--max-prompts", "8", "--no-robustness"
    )


def to_top(page, selector: str) -> None:
    """Scroll so that ``selector`` is at the top of the window."""
    page.evaluate(f"document.querySelector('{selector}').scrollIntoView({{block: 'start'}})")


def shows(page, selector: str, text: str) -> None:
    page.wait_for_function(f"document.querySelector('{selector}')?.innerText.includes('{text}')")


def filled(page, selector: str) -> None:
    page.wait_for_function(f"document.querySelector('{selector}')?.value.length > 0")


STUDENT_ANSWERED = """(() => {
    const text = document.querySelector('#student textarea').value;
    return text && !text.startsWith('pick') && !text.startsWith('generating');
})()"""


def preview(page) -> None:
    page.locator("#student-run input").click()
    page.get_by_role("option").first.click()  # the newest run's student, in the third column
    page.locator("#prompt textarea").fill(PROMPT)
    page.locator("#run-preview").click()
    page.wait_for_selector("#mean-kl >> text=Mean KL", timeout=900_000)
    page.wait_for_function(STUDENT_ANSWERED, timeout=900_000)


def constitution(page) -> None:
    page.reload()  # the token count is made when the page loads; the model may only now be loaded
    filled(page, "#principle-text textarea")
    shows(page, "#token-count", "context")


def data(page) -> None:
    shows(page, "#data-sets", "default")


def review(page) -> None:
    filled(page, "#review-prompt textarea")


def distill(page) -> None:
    filled(page, "#train-run input")
    page.wait_for_selector("#train-heldout-plot img")
    to_top(page, "#train-run")


def compare(page) -> None:
    filled(page, "#eval-pick input")
    shows(page, "#scoreboard", "gap closed")
    page.locator("#scoreboard").scroll_into_view_if_needed()


# (tab, what to do before the screenshot), in this order: the preview loads the model first.
VIEWS = {
    "Preview": preview,
    "Constitution": constitution,
    "Data": data,
    "Review": review,
    "Distill": distill,
    "Compare": compare,
}


def shoot(url: str, out: Path, tabs: list[str]) -> list[Path]:
    from playwright.sync_api import sync_playwright

    saved = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.set_default_timeout(180_000)
        page.goto(url)
        filled(page, "#principle-text textarea")
        for name, prepare in VIEWS.items():
            if name not in tabs:
                continue
            page.get_by_role("tab", name=name, exact=True).click()
            prepare(page)
            page.wait_for_timeout(1500)  # let plots and tables finish drawing
            path = out / f"{name.lower()}.png"
            page.screenshot(path=path)
            saved.append(path)
            print("saved", path, flush=True)
        browser.close()
    return saved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="folder for the PNGs (default docs/img)")
    parser.add_argument("--keep", action="store_true", help="keep the workspace and print where it is")
    parser.add_argument("--workspace", type=Path, help="a workspace made before: shoot it without seeding it")
    parser.add_argument("--tab", action="append", choices=list(VIEWS), help="only this tab (repeat for several)")
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        print(f"error: Chromium not found at {CHROMIUM} (make browser)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    workspace = args.workspace or Path(tempfile.mkdtemp(prefix="ctxdistill-shots-"))
    env = {
        **os.environ,
        "CTXDISTILL_MODELS": os.environ.get("CTXDISTILL_MODELS", str(REPO / ".cache" / "models")),
        "CTXDISTILL_DEMO": "0",
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    os.environ.update(env)
    try:
        if not args.workspace:
            seed(workspace, env)
        proc, url = start_app(workspace)
        try:
            shoot(url, args.out, args.tab or list(VIEWS))
        finally:
            stop_app(proc)
    finally:
        if args.keep or args.workspace:
            print("workspace:", workspace)
        else:
            shutil.rmtree(workspace, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
