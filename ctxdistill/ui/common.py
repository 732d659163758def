"""What every tab shares: the workspace store, who the visitor is, the loaded model, and the
constitution currently being edited. Tabs call the library through these and stay thin."""

from __future__ import annotations

import atexit
import contextlib
import functools
import html
import inspect
import os
import shutil
import tempfile
import time
import traceback
import typing
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from ctxdistill import constitution as cmod
from ctxdistill import demo as demo_mode
from ctxdistill import jobs
from ctxdistill.prompts import ensure_default_prompts
from ctxdistill.safety import UnsafeInput, check_upload, redact, safe_path
from ctxdistill.store import NotFound, Store, workspace_home

# Model-heavy events share one queue slot: two visitors never load or run two models at once.
MODEL_QUEUE = "model"
# Uploads in local mode; demo mode uses its own cap (DemoCaps.upload_mb).
LOCAL_UPLOAD_MB = 20
# what a form's predicted time says before this machine was measured (estimate.calibrate loads the
# model and times a few steps of each kind of work)
UNMEASURED = (
    "**Time:** press *Estimate the time* to measure this machine (it loads the model and times a few "
    "steps: about a minute on a 2-core CPU, more when the machine is busy)."
)
# gradio copies a file a callback returns into its own cache as the event ends: a download folder
# is not read again after that, and goes at the next download this much later (or at exit)
DOWNLOAD_KEEP_S = 600


@dataclass
class AppContext:
    home: Path
    model_spec: str | None = None
    demo: bool = False
    store: Store = field(init=False)
    # set by app.build_app before the tabs are built
    draft: gr.State | None = None  # the constitution being edited, as a dict
    version: gr.State | None = None  # id of the saved version the draft started from
    tabs: gr.Tabs | None = None  # to switch tabs from a button
    influence_button: gr.Button | None = None  # the Constitution tab's link to principle influence (Compare tab)
    rebake_form: tuple | None = (
        None  # the Distill form's (version, from-run, their section): Compare's re-bake offer fills them
    )
    # the page's one poll (ui/poll.py): a fingerprint of the store, the timer, and an event's arguments
    # that poll at once (e.g. `.then(**ctx.poll_now)` after starting a job)
    stamps: dict = field(default_factory=dict)
    timer: gr.Timer | None = None
    poll_now: dict = field(default_factory=dict)
    watchers: list = field(default_factory=list)

    def __post_init__(self):
        self.store = Store(self.home)
        from ctxdistill import jobs

        jobs.refresh(self.store)  # workers that died while the app was down are settled before any page opens
        self.caps = demo_mode.DemoCaps.from_env() if self.demo else None
        self.secret = demo_mode.visitor_secret(self.home) if self.demo else None

    @classmethod
    def from_env(cls, home=None) -> "AppContext":
        return cls(
            home=workspace_home(home), model_spec=os.environ.get("CTXDISTILL_MODEL") or None, demo=demo_mode.enabled()
        )

    def owner(self, request: gr.Request | None) -> str:
        """The shared local workspace is owner "": demo visitors each get their own, the id in their
        signed cookie (see ctxdistill.demo: it survives a reload, and a session hash cannot claim it)."""
        if self.demo and request is not None:
            visitor = demo_mode.visitor_of(self.secret, getattr(request, "cookies", None))
            if visitor is None:
                raise gr.Error(
                    "This browser sent no valid visitor cookie: reload the page (the demo needs "
                    "cookies to keep each visitor's work apart)."
                )
            return visitor
        return ""

    def server_options(self) -> dict:
        """Keyword arguments for Blocks.launch: the page's early script (ui/page.py) and, in demo
        mode, the middleware that gives each visitor a signed cookie."""
        from starlette.middleware import Middleware

        from ctxdistill.ui.page import EarlyScript

        visitors = [Middleware(demo_mode.VisitorCookie, secret=self.secret)] if self.demo else []
        return {"app_kwargs": {"middleware": [Middleware(EarlyScript), *visitors]}}

    def watch(self, fn, inputs, outputs, on: tuple[str, ...], every: bool = False) -> None:
        """Run fn(inputs) -> outputs whenever the page's poll sees those parts of the store change
        ("versions", "sets", "jobs", "progress:<kind>"; see ui/poll.py). The poll sends only the outputs
        whose value changed since it last sent them, unless ``every``: for outputs that another event
        sets too (the poll would not know their value changed there)."""
        self.watchers.append((fn, inputs, outputs, on, every))

    def limit(self, **values) -> None:
        """gr.Error when a requested size is above the demo caps (nothing to check locally).
        Every callback that starts work or stores data calls it; `text_kb=demo.kb(text, ...)` for texts."""
        if self.caps is not None:
            try:
                self.caps.check(**values)
            except demo_mode.DemoLimit as exc:
                raise gr.Error(str(exc)) from None

    def local_only(self, what: str) -> None:
        """gr.Error in demo mode: `what` would act with the Space owner's HF_TOKEN for any visitor."""
        if self.demo:
            raise gr.Error(
                f"{what} is off in the public demo (it would use the Space owner's token). "
                "Export and download instead, or duplicate this Space."
            )

    @property
    def upload_bytes(self) -> int:
        return self.caps.upload_bytes if self.caps is not None else LOCAL_UPLOAD_MB << 20

    def upload(self, path, suffixes: tuple[str, ...]) -> str:
        """The uploaded file's path once its type and size are checked; gr.Error otherwise."""
        try:
            return str(check_upload(path, suffixes, self.upload_bytes))
        except UnsafeInput as exc:
            raise gr.Error(str(exc)) from None

    def find_job(self, job_id, request: gr.Request | None) -> dict | None:
        """The visitor's own job (refreshed), or None: what a timer polls, quietly."""
        from ctxdistill import jobs

        try:
            return jobs.get(self.store, int(job_id), owner=self.owner(request))
        except (NotFound, TypeError, ValueError):
            return None

    def job(self, job_id, request: gr.Request | None) -> dict:
        """The visitor's own job (refreshed), or gr.Error: ids typed into the API are not trusted."""
        job = self.find_job(job_id, request)
        if job is None:
            raise gr.Error(f"No run or job {job_id!r} here.")
        return job

    def resume_job(self, job_id, request: gr.Request | None, what: str = "job") -> int:
        """Restart the visitor's own failed or cancelled job; gr.Error with the reason otherwise."""
        from ctxdistill import jobs

        if not job_id:
            raise gr.Error(f"Pick a {what} to resume.")
        job_id = self.job(job_id, request)["id"]
        try:
            jobs.resume(self.store, job_id)
        except jobs.StoreError as exc:
            raise gr.Error(str(exc))
        return job_id

    def constitution(self, version_id, request: gr.Request | None) -> dict:
        """The visitor's own constitution version, or gr.Error."""
        try:
            return self.store.get_constitution(int(version_id), owner=self.owner(request))
        except (NotFound, TypeError, ValueError):
            raise gr.Error(f"No constitution version {version_id!r} here.") from None

    def model(self):
        from ctxdistill.models import default_models_dir, load_model_cached

        return load_model_cached(self.model_spec, models_dir=default_models_dir(self.home))

    def model_params(self) -> int | None:
        """The app's model's number of weights (``models.param_count``); None where not on disk yet."""
        from ctxdistill.models import default_models_dir, param_count

        return param_count(self.model_spec, default_models_dir(self.home))


def bind(ctx: AppContext, fn, *fixed):
    """A tab's module-level handler fn(ctx, *fixed, ...) as the event callback of its other arguments
    (fixed: what one handler serving several components is told apart by, e.g. the field it edits).

    gradio reads a callback's signature and type hints (it passes gr.Request to the parameter annotated
    so) and streams a generator's values: the callback keeps fn's signature less the bound parameters, its
    hints resolved in fn's module, its name (API names) and its kind. It does not point back to fn (no
    __wrapped__), so inspect.unwrap past the page poll's memo (ui/poll.py) stops at a callback that
    needs no ctx."""
    if inspect.isgeneratorfunction(fn):

        def callback(*args, **kwargs):
            with shown_redacted():
                yield from fn(ctx, *fixed, *args, **kwargs)
    else:

        def callback(*args, **kwargs):
            with shown_redacted():
                return fn(ctx, *fixed, *args, **kwargs)

    functools.update_wrapper(callback, fn)
    del callback.__wrapped__
    params = list(inspect.signature(fn).parameters.values())
    bound, params = params[: 1 + len(fixed)], params[1 + len(fixed) :]
    hints = {k: v for k, v in typing.get_type_hints(fn).items() if k not in {p.name for p in bound}}
    callback.__signature__ = inspect.Signature(
        [p.replace(annotation=hints.get(p.name, p.empty)) for p in params],
        return_annotation=hints.get("return", inspect.Signature.empty),
    )
    callback.__annotations__ = hints
    return callback


@contextlib.contextmanager
def shown_redacted():
    """Whatever a handler raises reaches the page with hub tokens redacted (safety.redact): its
    gr.Error's message, or an unexpected exception's (whose traceback goes to the server's log)."""
    try:
        yield
    except gr.Error as exc:
        exc.message = redact(str(exc.message))
        raise
    except Exception as exc:
        traceback.print_exc()
        raise gr.Error(redact(str(exc)) or type(exc).__name__) from None


@functools.cache
def _download_root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="ctxdistill-downloads-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


def download_dir() -> Path:
    """A fresh folder for a file to download, in the process's one download folder; the folders made
    more than DOWNLOAD_KEEP_S ago are removed first, and the whole folder when the process exits."""
    root, now = _download_root(), time.time()
    for old in root.iterdir():
        try:
            stale = now - old.stat().st_mtime > DOWNLOAD_KEEP_S
        except FileNotFoundError:  # another download's clean-up got there first
            continue
        if stale:
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(dir=root))


def slider(minimum, maximum, value, **kwargs):
    """gr.Slider, or a fixed number where a demo cap leaves a single value (gradio refuses a slider
    whose minimum is not below its maximum)."""
    if maximum > minimum:
        return gr.Slider(minimum, maximum, value=min(value, maximum), **kwargs)
    kwargs.pop("step", None)
    return gr.Number(value=maximum, minimum=maximum, maximum=maximum, precision=0, interactive=False, **kwargs)


def draft_constitution(draft: dict | None) -> cmod.Constitution:
    """The editor's dict as a Constitution (not validated: drafts may be incomplete)."""
    return cmod.from_dict(draft or {"name": "untitled", "principles": []})


def starved_note(job: dict) -> str:
    """A status line's hint that a live job's worker gets almost no CPU (it is not dead)."""
    from ctxdistill import jobs

    age = jobs.starved(job)
    return f" · the worker is alive but has had almost no CPU for {age:.0f} s (the machine is busy)" if age else ""


def error_text(exc: Exception) -> str:
    return f"**Error:** {redact(str(exc))}"


def keep(choices: list[tuple[str, int]], current, default=None):
    """A dropdown's update to fresh choices: the current pick while it is still there."""
    ids = [c[1] for c in choices]
    return gr.update(
        choices=choices, value=current if current in ids else (default if default in ids else (ids[0] if ids else None))
    )


def highlight(tokens: list[str], kls: list[float]) -> list[tuple[str, float | None]]:
    """(token, score in 0..1) pairs for gr.HighlightedText, scaled to the largest KL in the answer."""
    top = max(kls, default=0.0) or 1.0
    return [(tok, round(min(kl / top, 1.0), 3)) for tok, kl in zip(tokens, kls)]


def prompt_choices(ctx: AppContext, owner: str, split: str | None = None) -> list[str]:
    ensure_default_prompts(ctx.store, owner)
    rows = []
    for s in ctx.store.prompt_sets(owner=owner):
        rows += ctx.store.get_prompts(s["name"], split=split, owner=owner)
    return [r["text"] for r in rows]


def version_options(ctx: AppContext, owner: str, only: set | None = None) -> list[tuple[str, int]]:
    """(label, id) of the visitor's constitution versions, newest first; ``only``: just these ids."""
    return [
        (f"v{v['id']} · {v['name']}" + (f" · {v['message']}" if v["message"] else ""), v["id"])
        for v in ctx.store.list_constitution_versions(owner=owner)
        if only is None or v["id"] in only
    ]


def version_list(ctx: AppContext, current, picked, request: gr.Request):
    """A version menu's fresh choices: the visitor's pick while it is still there, else the newest."""
    return keep(version_options(ctx, ctx.owner(request)), current if picked else None)


chosen = lambda: True  # a menu's .input: the visitor picked its value (a read: nothing is stored)


def version_menu(ctx: AppContext, elem_id: str, **kwargs) -> tuple[gr.Dropdown, gr.State]:
    """(menu, picked) of a tab's "Constitution version" dropdown: it follows the newest saved version
    (after a reload too) until the visitor picks one there (``picked`` turns true); a handler that
    fills the menu for the visitor (e.g. from a picked run) sets ``picked`` as well."""
    menu = gr.Dropdown(label="Constitution version", choices=[], elem_id=elem_id, **kwargs)
    picked = gr.State(False)
    menu.input(chosen, None, picked, queue=False, show_progress="hidden")
    ctx.watch(bind(ctx, version_list), [menu, picked], menu, on=("versions",))
    return menu, picked


def job_buttons(ctx: AppContext, n_starts: int, job_id, request: gr.Request):
    """A job form's buttons for the job it shows: its ``n_starts`` start buttons idle while the job is
    queued or running, its stop button (red) live only then."""
    job = ctx.find_job(job_id, request)
    live = job is not None and job["state"] in ("queued", "running")
    stop = gr.update(interactive=live, variant="stop" if live else "secondary")
    return (*[gr.update(interactive=not live)] * n_starts, stop) if n_starts else stop


def wire_job_buttons(ctx: AppContext, job, starts: list, stop) -> None:
    """``job_buttons`` follows the job a tab shows (``job``: its component) and the store's jobs."""
    buttons = bind(ctx, job_buttons, len(starts))
    ctx.watch(buttons, job, [*starts, stop], on=("jobs",), every=True)
    job.change(buttons, job, [*starts, stop], show_progress="hidden")


def drawn_key(job: dict | None) -> list | None:
    """What a job's live plots were drawn at (its step and state): a poll redraws a plot only when this moved."""
    return [job["id"], job["progress_done"], job["state"]] if job else None


def on_stop(ctx: AppContext, grace_s: float, job_id, request: gr.Request):
    """A tab's Stop: ask the visitor's own job to stop; a running one is killed if still alive
    ``grace_s`` later (the time its step and checkpoint may take)."""
    if job_id:
        jobs.cancel(ctx.store, ctx.job(job_id, request)["id"], grace_s=grace_s)


def on_resume(ctx: AppContext, job_id, request: gr.Request):
    """A tab's Resume: the visitor's own failed or cancelled job runs again from what it kept."""
    ctx.resume_job(job_id, request)


def job_status_html(
    job: dict | None, elem_id: str, empty: str, counter: str = "", notes: tuple[str, ...] = (), total: int = 0
) -> str:
    """A tab's job status: a progress bar, the job's id, kind, state and ``counter``, its live progress
    message while it runs, its error, then ``notes`` (HTML the tab made safe). ``total``: the bar's end
    where the job has not reported one yet."""
    if job is None:
        return f"<div id='{elem_id}'>{empty}</div>"
    done, total = job["progress_done"], max(job["progress_total"] or total, 1)
    head = f"<b>Job {job['id']}</b> · {job['kind']} · <span class='job-state'>{job['state']}</span>"
    lines = [head + (f" · {counter}" if counter else "")]
    if job["message"] and job["state"] in ("queued", "running"):
        lines.append(html.escape(job["message"]) + starved_note(job))
    if job["error"]:
        lines.append(f"<span style='color:#b00'>{html.escape(job['error'])}</span>")
    lines += notes
    bar = f"<progress value='{done}' max='{total}' style='width:100%'></progress>"
    return f"<div id='{elem_id}'>{bar}<br>" + "<br>".join(lines) + "</div>"


def train_runs(ctx: AppContext, owner: str) -> list[dict]:
    """The visitor's training runs (jobs of kind train), newest first."""
    return jobs.list_jobs(ctx.store, kind="train", owner=owner, limit=50)


def adapter_dir(ctx: AppContext, job: dict) -> Path:
    """Where a run's adapter lives (the job already checked to be the visitor's own)."""
    from ctxdistill.adapters import run_adapter

    return safe_path(ctx.store.runs_dir, run_adapter(ctx.store, job["id"]).relative_to(ctx.store.runs_dir))


def students(ctx: AppContext, owner: str) -> list[dict]:
    """The visitor's finished training runs that have an adapter, newest first."""
    return [job for job in train_runs(ctx, owner) if job["state"] == "done" and adapter_dir(ctx, job).is_dir()]


def adapter_choices(ctx: AppContext, owner: str) -> list[tuple[str, int]]:
    """(label, run id) of the finished runs with an adapter, newest first: the students one can talk to."""
    out = []
    for job in students(ctx, owner):
        gap = (job["result"] or {}).get("gap_closed")
        out.append(
            (
                f"job {job['id']} · {job['config'].get('loss')}"
                + (f" · gap closed {gap:.0%}" if gap is not None else ""),
                job["id"],
            )
        )
    return out
