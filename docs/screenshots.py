"""Screenshots of each tab of the real app, for the README and docs/: ``docs/img/<tab>.png``.

    .venv/bin/python docs/screenshots.py            # about 5 minutes on 2 CPU cores
    .venv/bin/python docs/screenshots.py --keep     # and print the workspace it made, to look around
    .venv/bin/python docs/screenshots.py --workspace DIR   # shoot a workspace made before, as it is

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


def shoot(url: str, out: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright

    saved = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.set_default_timeout(180_000)
        page.goto(url)
        page.wait_for_function("document.querySelector('#principle-text textarea')?.value.length > 0")

        def save(name: str) -> None:
            page.wait_for_timeout(1500)  # let plots and tables finish drawing
            path = out / f"{name}.png"
            page.screenshot(path=path)
            saved.append(path)
            print("saved", path, flush=True)

        def shows(selector: str, text: str) -> None:
            page.wait_for_function(f"document.querySelector('{selector}')?.innerText.includes('{text}')")

        def tab(name: str) -> None:
            page.get_by_role("tab", name=name, exact=True).click()

        tab("Preview")  # first: it loads the model, which the Constitution tab's token count needs too
        page.locator("#prompt textarea").fill(PROMPT)
        page.locator("#run-preview").click()
        page.wait_for_selector("#mean-kl >> text=Mean KL", timeout=900_000)
        save("preview")

        page.reload()
        page.wait_for_function("document.querySelector('#principle-text textarea')?.value.length > 0")
        shows("#token-count", "context")
        save("constitution")

        tab("Data")
        shows("#data-sets", "default")
        save("data")

        tab("Review")
        page.wait_for_function("document.querySelector('#review-prompt textarea')?.value.length > 0")
        save("review")

        tab("Distill")
        page.wait_for_function("document.querySelector('#train-run input')?.value.length > 0")
        page.wait_for_function("document.querySelector('#train-heldout-plot canvas, #train-heldout-plot svg')")
        save("distill")

        tab("Compare")
        page.wait_for_function("document.querySelector('#eval-pick input')?.value.length > 0")
        shows("#scoreboard", "gap closed")
        page.locator("#scoreboard").scroll_into_view_if_needed()
        save("compare")
        browser.close()
    return saved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="folder for the PNGs (default docs/img)")
    parser.add_argument("--keep", action="store_true", help="keep the workspace and print where it is")
    parser.add_argument("--workspace", type=Path, help="a workspace made before: shoot it without seeding it")
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
            shoot(url, args.out)
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
