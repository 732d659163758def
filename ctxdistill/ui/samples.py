"""Review tab: the curation workbench.

One sample at a time — prompt, unprompted answer, prompted answer, critique chain and the
final text side by side. Accept, reject or edit; every action is written to the store at
once, with the version this tab last read, so a second tab (or a job) that changed the
sample first is reported instead of overwritten. Keyboard: a accept, r reject, e edit,
Ctrl+Enter save the edit, Esc leave the text, j/→ next, k/← previous.
"""

from __future__ import annotations

import functools
import html
import shutil
import time
from pathlib import Path

import gradio as gr

from ctxdistill import curate
from ctxdistill.demo import kb
from ctxdistill.safety import redact
from ctxdistill.store import ConflictError, NotFound
from ctxdistill.ui.common import AppContext, bind, download_dir, version_options

ANY = "(any)"
STATUSES = ("pending", "accepted", "rejected", "all")

SHORTCUTS_HTML = """
<div id="review-shortcuts">Keys: <span class="kbd">a</span> accept · <span class="kbd">r</span> reject ·
<span class="kbd">e</span> edit the final text ·
<span class="kbd">Ctrl</span>+<span class="kbd">Enter</span> save the edit ·
<span class="kbd">Esc</span> leave the text · <span class="kbd">j</span>/<span class="kbd">→</span> next ·
<span class="kbd">k</span>/<span class="kbd">←</span> previous</div>
"""

# Keys click the buttons by elem_id, so a key does exactly what its button does. Installed once
# per page; inactive while the Review tab is hidden or while typing (except Ctrl+Enter / Esc).
SHORTCUTS_JS = """
if (!window.ctxdistillReviewKeys) {
  window.ctxdistillReviewKeys = true;
  document.addEventListener('keydown', (ev) => {
    const accept = document.querySelector('#review-accept');
    if (!accept || accept.offsetParent === null) return;
    const target = ev.target;
    const click = (id) => { const b = document.querySelector('#' + id); if (b) { ev.preventDefault(); b.click(); } };
    if (target && (target.tagName === 'TEXTAREA' || target.tagName === 'INPUT' || target.isContentEditable)) {
      if (ev.key === 'Enter' && (ev.ctrlKey || ev.metaKey)) click('review-save');
      else if (ev.key === 'Escape') target.blur();
      return;
    }
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (ev.key === 'e') {
      const box = document.querySelector('#review-final textarea');
      if (box) { ev.preventDefault(); box.focus(); }
      return;
    }
    const keys = {a: 'review-accept', r: 'review-reject', j: 'review-next', ArrowRight: 'review-next',
                  k: 'review-prev', ArrowLeft: 'review-prev'};
    if (keys[ev.key]) click(keys[ev.key]);
  });
}
"""


def filters_of(version_id, set_name, status, principle, flag, search, min_len, max_len) -> dict:
    """Widget values -> store.list_samples / count_samples keyword arguments."""
    return {
        "constitution_id": int(version_id) if version_id else None,
        "set_name": None if set_name in (None, "", ANY) else set_name,
        "status": None if status in (None, "all") else status,
        "principle": None if principle in (None, "", ANY) else principle,
        "flag": None if flag in (None, "", ANY) else flag,
        "search": (search or "").strip() or None,
        "min_len": int(min_len) if min_len else None,
        "max_len": int(max_len) if max_len else None,
    }


def counters_html(counts: dict, flagged: int) -> str:
    total, acc, rej = counts["total"], counts["accepted"], counts["rejected"]
    reviewed = acc + rej
    rate = f"{acc / reviewed:.0%}" if reviewed else "–"
    return (
        f"<div id='review-counts'><progress value='{reviewed}' max='{max(total, 1)}' style='width:100%'></progress><br>"
        f"reviewed <b class='reviewed'>{reviewed}</b> of <b class='total'>{total}</b> · "
        f"accepted <b class='accepted'>{acc}</b> · rejected <b class='rejected'>{rej}</b> · "
        f"pending <b class='pending'>{counts['pending']}</b> · acceptance rate <b class='rate'>{rate}</b> · "
        f"flagged {flagged}</div>"
    )


def badges_html(sample: dict | None) -> str:
    if not sample:
        return ""
    badges = [label for label in map(curate.flag_label, sample["flags"]) if label]
    colour = {"accepted": "#1a7f37", "rejected": "#b00", "pending": "#666"}[sample["status"]]
    status = f"<span class='badge status' style='background:{colour}'>{sample['status']}</span>"
    edited = "<span class='badge'>edited</span>" if sample["edited"] else ""
    return (
        "<div id='review-badge-list'>"
        + status
        + edited
        + "".join(f"<span class='badge flag'>{html.escape(b)}</span>" for b in badges)
        + "</div>"
    )


def chain_html(sample: dict | None) -> str:
    if not sample or not sample["chain"]:
        return (
            "<div class='chain'><i>No critique/revision rounds (run Critique &amp; revise in the Data tab).</i></div>"
        )
    start = (sample["meta"] or {}).get("revise_start", "unprompted")
    parts = [f"<div class='chain'><small>started from the {html.escape(start)} answer</small>"]
    for i, step in enumerate(sample["chain"], 1):
        e = lambda key: html.escape(str(step.get(key) or "")).replace("\n", "<br>")
        why = ", ".join(curate.WORSE_REASONS.get(r, r) for r in step.get("worse") or [])
        revision = (
            f"<br><i>Revision, discarded ({html.escape(why)}):</i> {e('discarded')}"
            f"<br><i>Kept:</i> the answer it revised"
            if "discarded" in step
            else f"<br><i>Revision:</i> {e('revision')}"
        )
        parts.append(
            f"<p><b>Round {i} · {e('principle')}</b><br><i>Critique request:</i> {e('critique_request')}"
            f"<br><i>Critique:</i> {e('critique')}<br><i>Revision request:</i> {e('revision_request')}"
            f"{revision}</p>"
        )
    return "".join(parts) + "</div>"


def layout(ctx: AppContext) -> dict:
    """The tab's components, by name; "filters" in filters_of's order."""
    gr.Markdown("Review the samples: keep the answers you want the model to learn. Flags are hints, not verdicts.")
    with gr.Row():
        version = gr.Dropdown(label="Constitution version", choices=[], elem_id="review-version", scale=2)
        prompt_set = gr.Dropdown(label="Prompt set", choices=[ANY], value=ANY, elem_id="review-set")
        status = gr.Radio(list(STATUSES), value="pending", label="Status", elem_id="review-status")
        principle = gr.Dropdown(label="Principle", choices=[ANY], value=ANY, elem_id="review-principle")
        flag = gr.Dropdown(label="Flag", choices=[ANY, *curate.FLAGS], value=ANY, elem_id="review-flag")
    with gr.Row():
        search = gr.Textbox(label="Search prompt, answers and note", elem_id="review-search", scale=3)
        min_len = gr.Number(label="Min length (chars, 0 = any)", value=0, precision=0, elem_id="review-min-len")
        max_len = gr.Number(label="Max length (chars, 0 = any)", value=0, precision=0, elem_id="review-max-len")
        reload = gr.Button("Reload", elem_id="review-reload", size="sm")
    filters = [version, prompt_set, status, principle, flag, search, min_len, max_len]
    counters = gr.HTML(elem_id="review-counters", js_on_load=None)
    gr.HTML(SHORTCUTS_HTML, elem_id="review-keys", js_on_load=SHORTCUTS_JS)

    position = gr.Markdown("No samples yet.", elem_id="review-position")
    badges = gr.HTML(elem_id="review-badges", js_on_load=None)
    prompt = gr.Textbox(label="Prompt", interactive=False, lines=2, elem_id="review-prompt")
    with gr.Row():
        unprompted = gr.Textbox(label="Unprompted answer", interactive=False, lines=8, elem_id="review-unprompted")
        prompted = gr.Textbox(label="Prompted answer (teacher)", interactive=False, lines=8, elem_id="review-prompted")
        with gr.Column():
            gr.Markdown("**Critique chain**")
            chain = gr.HTML(elem_id="review-chain", js_on_load=None)
    final = gr.Textbox(
        label="Final text (what the student learns) — e to edit, Ctrl+Enter to save",
        lines=5,
        interactive=True,
        elem_id="review-final",
    )
    note = gr.Textbox(label="Note", lines=1, elem_id="review-note")
    with gr.Row():
        prev = gr.Button("← Previous (k)", elem_id="review-prev")
        accept = gr.Button("Accept (a)", variant="primary", elem_id="review-accept")
        reject = gr.Button("Reject (r)", variant="stop", elem_id="review-reject")
        edit = gr.Button("Edit (e)", elem_id="review-edit")
        save = gr.Button("Save edit (Ctrl+Enter)", elem_id="review-save")
        nxt = gr.Button("Next (j) →", elem_id="review-next")
    message = gr.Markdown(elem_id="review-msg")

    with gr.Accordion("Bulk actions", open=False):
        with gr.Row():
            bulk_action = gr.Dropdown(
                [(label, key) for key, label in curate.BULK_ACTIONS.items()],
                value="reject_empty",
                label="Action",
                elem_id="review-bulk-action",
                scale=3,
                min_width=480,  # the longest action's label (62 characters) shows whole
            )
            bulk = gr.Button("Apply", elem_id="review-bulk")
            undo = gr.Button("Undo the last bulk action", elem_id="review-bulk-undo", visible=False)
            reflag = gr.Button("Recompute flags", elem_id="review-reflag")
        bulk_preview = gr.Markdown(elem_id="review-bulk-preview")
        bulk_msg = gr.Markdown(elem_id="review-bulk-msg")
    with gr.Accordion("Export accepted samples", open=False):
        with gr.Row():
            export_fmt = gr.Radio(
                list(curate.EXPORT_FORMATS), value="messages", label="Format", elem_id="review-export-format"
            )
            hub_id = gr.Textbox(
                label="Also push to the Hub as (datasets format, needs HF_TOKEN)",
                placeholder="owner/name",
                elem_id="review-export-hub",
                visible=not ctx.demo,
            )
            export = gr.Button("Export", elem_id="review-export")
        export_file = gr.File(label="Download", elem_id="review-export-file")
        export_msg = gr.Markdown(elem_id="review-export-msg")

    queue = gr.State([])  # sample ids under the current filters, in review order
    pos = gr.State(0)
    shown = gr.State(None)  # {"id", "version", "final", "note"} of the sample on screen
    last_bulk = gr.State(None)  # the last bulk action, to undo it
    return dict(
        version=version,
        prompt_set=prompt_set,
        status=status,
        principle=principle,
        flag=flag,
        search=search,
        min_len=min_len,
        max_len=max_len,
        reload=reload,
        filters=filters,
        counters=counters,
        position=position,
        badges=badges,
        prompt=prompt,
        unprompted=unprompted,
        prompted=prompted,
        chain=chain,
        final=final,
        note=note,
        prev=prev,
        accept=accept,
        reject=reject,
        edit=edit,
        save=save,
        nxt=nxt,
        message=message,
        bulk_action=bulk_action,
        bulk=bulk,
        undo=undo,
        reflag=reflag,
        bulk_preview=bulk_preview,
        bulk_msg=bulk_msg,
        export_fmt=export_fmt,
        hub_id=hub_id,
        export=export,
        export_file=export_file,
        export_msg=export_msg,
        queue=queue,
        pos=pos,
        shown=shown,
        last_bulk=last_bulk,
    )


# ------------------------------------------------------------------ rendering
# Callbacks take gr.Request first: gradio injects it only into parameters before *args.


def counts_of(ctx: AppContext, owner: str, *filter_values) -> str:
    f = filters_of(*filter_values)
    if f["constitution_id"] is None:
        return counters_html({"total": 0, "accepted": 0, "rejected": 0, "pending": 0}, 0)
    f.pop("status")  # counters show the whole selection, whatever status is being reviewed
    counts = ctx.store.count_samples(owner=owner, **f)
    return counters_html(counts, counts["flagged"])


def empty_text(filter_values) -> str:
    """What the review shows when nothing matches: with a status filter, that no sample has that status
    (the counters beside it count the whole selection, whatever the status)."""
    if not filter_values[0]:
        return "Pick a constitution version."
    status = filter_values[2]
    if status not in (None, "all"):
        return f"No {status} samples in this selection (the counters count all of its samples)."
    return "No samples match these filters."


def render(ctx: AppContext, owner: str, ids: list[int], at: int, filter_values, msg: str = ""):
    """The view (see build: position, badges, texts, chain, final, note, shown, pos, counters, message)."""
    sample = None
    if ids:
        at = max(0, min(at, len(ids) - 1))
        try:
            sample = ctx.store.get_sample(ids[at], owner=owner)
        except NotFound:
            msg = msg or "This sample was deleted; press Reload."
    if sample is None:
        head = empty_text(filter_values)
        return (head, "", "", "", "", chain_html(None), "", "", None, at, counts_of(ctx, owner, *filter_values), msg)
    head = position_text(sample, at, len(ids))
    state = {"id": sample["id"], "version": sample["version"], "final": sample["final"], "note": sample["note"]}
    return (
        head,
        badges_html(sample),
        sample["prompt"],
        sample["unprompted"],
        sample["prompted"],
        chain_html(sample),
        sample["final"],
        sample["note"],
        state,
        at,
        counts_of(ctx, owner, *filter_values),
        msg,
    )


def position_text(sample: dict, at: int, n: int) -> str:
    return f"Sample **{at + 1}** of **{n}** · #{sample['id']} · set `{sample['set_name']}`"


def load_queue(ctx: AppContext, request: gr.Request, *filter_values):
    owner = ctx.owner(request)
    f = filters_of(*filter_values)
    ids = [s["id"] for s in ctx.store.list_samples(owner=owner, **f)] if f["constitution_id"] else []
    return ids, *render(ctx, owner, ids, 0, filter_values)


def sampled_versions(ctx: AppContext, owner: str) -> list[tuple[str, int]]:
    """Constitution versions that have samples, newest first."""
    return version_options(ctx, owner, only={s["constitution_id"] for s in ctx.store.list_samples(owner=owner)})


def principle_choices(ctx: AppContext, version_id, request: gr.Request):
    if not version_id:
        return gr.update(choices=[ANY], value=ANY)
    content = ctx.constitution(version_id, request)["content"]
    return gr.update(choices=[ANY, *[p["id"] for p in content.get("principles", [])]], value=ANY)


def on_load(ctx: AppContext, request: gr.Request):
    owner = ctx.owner(request)
    versions = sampled_versions(ctx, owner)
    sets = [ANY, *[s["name"] for s in ctx.store.prompt_sets(owner=owner)]]
    first = versions[0][1] if versions else None
    values = (first, ANY, "pending", ANY, ANY, "", 0, 0)
    return (
        gr.update(choices=versions, value=first),
        gr.update(choices=sets, value=ANY),
        principle_choices(ctx, first, request),
        *load_queue(ctx, request, *values),
    )


def version_choices(ctx: AppContext, current, request: gr.Request):
    """Reload also picks up versions that got samples since the page opened (a job finished)."""
    versions = sampled_versions(ctx, ctx.owner(request))
    ids = [v[1] for v in versions]
    return gr.update(choices=versions, value=current if current in ids else (ids[0] if ids else None))


def follow(ctx: AppContext, request: gr.Request, ids, at, state, *filter_values):
    """The page's poll (a job adds samples, another tab or a command reviews them): the version list,
    the counters and the queue follow the store. Nothing is sent while the queue is as it was; when
    it changed, the sample on screen stays, with any edit in progress, and only its position moves;
    an empty view shows the first sample that arrived."""
    owner = ctx.owner(request)
    current = filter_values[0]
    versions = sampled_versions(ctx, owner)
    listed = [v[1] for v in versions]
    version = current if current in listed else (listed[0] if listed else None)
    values = (version, *filter_values[1:])
    picked = gr.update(choices=versions, value=version)
    if version != current:  # the first samples of a version arrived (or it went away)
        return picked, principle_choices(ctx, version, request), *load_queue(ctx, request, *values)
    f = filters_of(*values)
    now = [s["id"] for s in ctx.store.list_samples(owner=owner, **f)] if f["constitution_id"] else []
    unchanged = [gr.skip()] * 12  # the view's outputs, as render returns them
    if now == ids:
        return picked, gr.skip(), gr.skip(), *unchanged
    if not state:
        return picked, gr.skip(), now, *render(ctx, owner, now, 0, values)
    at = now.index(state["id"]) if state["id"] in now else max(0, min(at, len(now) - 1))
    sample = ctx.store.get_sample(state["id"], owner=owner)
    unchanged[0], unchanged[9], unchanged[10] = position_text(sample, at, len(now)), at, counts_of(ctx, owner, *values)
    return picked, gr.skip(), now, *unchanged


# ------------------------------------------------------------------ actions (written at once)


def action(
    ctx: AppContext, new_status: str | None, request: gr.Request, text, note_text, ids, at, state, *filter_values
):
    """Accept or reject (new_status), or save the edit (None), with the version this tab last read."""
    owner = ctx.owner(request)
    if not state:
        return render(ctx, owner, ids, at, filter_values, "Nothing to review here.")
    ctx.limit(text_kb=max(kb(text or ""), kb(note_text or "")))
    changes = {"status": new_status}
    if text is not None and text != state["final"]:
        changes["final"] = text
    if note_text is not None and note_text != state["note"]:
        changes["note"] = note_text
    if not any(v is not None for v in changes.values()):
        return render(ctx, owner, ids, at, filter_values, "Nothing changed.")
    try:
        ctx.store.get_sample(state["id"], owner=owner)  # the visitor's own sample only
        row = curate.review(ctx.store, state["id"], state["version"], reviewer=owner, **changes)
    except ConflictError:
        return render(
            ctx,
            owner,
            ids,
            at,
            filter_values,
            "**Changed in another tab** (or by a job) since you opened it: reloaded the current "
            "version; your action was not applied.",
        )
    except NotFound:
        return render(ctx, owner, ids, at, filter_values, "This sample is gone; press Reload.")
    done = f"Saved #{row['id']} at {time.strftime('%H:%M:%S')}: " + (new_status or "edit")
    return render(ctx, owner, ids, at + 1 if new_status else at, filter_values, done)


def move(ctx: AppContext, step: int, request: gr.Request, ids, at, *filter_values):
    return render(ctx, ctx.owner(request), ids, at + step, filter_values)


# ------------------------------------------------------------------ bulk and export


def own_filters(ctx: AppContext, request: gr.Request, filter_values) -> dict:
    """The filters, once the picked version is checked to be the visitor's own."""
    f = filters_of(*filter_values)
    if f["constitution_id"] is None:
        raise gr.Error("Pick a constitution version first.")
    ctx.constitution(f["constitution_id"], request)
    return f


# Bulk actions change the pending samples the filters show (status aside: they act on pending
# ones only), say how many before Apply, and the last one can be undone.
def targets(ctx: AppContext, request: gr.Request, bulk_action, filter_values) -> list[int]:
    f = own_filters(ctx, request, filter_values)
    f.pop("status")
    return curate.bulk_targets(ctx.store, bulk_action, f.pop("constitution_id"), owner=ctx.owner(request), **f)


def preview_bulk(ctx: AppContext, request: gr.Request, bulk_action, *filter_values):
    if not filters_of(*filter_values)["constitution_id"]:
        return ""
    n = len(targets(ctx, request, bulk_action, filter_values))
    return f"Apply would change **{n}** pending sample{'s' if n != 1 else ''} of those the filters show."


def on_bulk(ctx: AppContext, request: gr.Request, bulk_action, *filter_values):
    ids = targets(ctx, request, bulk_action, filter_values)
    n = curate.apply_bulk(ctx.store, bulk_action, ids, reviewer=ctx.owner(request))
    return (
        {"action": bulk_action, "ids": ids},
        gr.update(visible=bool(n)),
        f"{curate.BULK_ACTIONS[bulk_action].capitalize()} (of those shown): **{n}** changed.",
    )


def on_undo(ctx: AppContext, request: gr.Request, last):
    if not last:
        return None, gr.update(visible=False), "Nothing to undo."
    # the ids come from this session's server-side state, never from the browser
    n = curate.undo_bulk(ctx.store, last["action"], last["ids"], reviewer=ctx.owner(request))
    return None, gr.update(visible=False), f"Undone: **{n}** sample{'s' if n != 1 else ''} back to pending."


def on_reflag(ctx: AppContext, request: gr.Request, ids, at, *filter_values):
    owner = ctx.owner(request)
    f = own_filters(ctx, request, filter_values)
    counts = curate.refresh_flags(ctx.store, f["constitution_id"], owner=owner)
    summary = ", ".join(f"{curate.FLAG_LABELS[k]} {v}" for k, v in counts.items())
    return render(ctx, owner, ids, at, filter_values, f"Flags recomputed: {summary}.")


def on_export(ctx: AppContext, request: gr.Request, fmt, hub, *filter_values):
    owner = ctx.owner(request)
    f = own_filters(ctx, request, filter_values)
    if (hub or "").strip():
        ctx.local_only("Pushing to the Hub")
    suffix = {"messages": ".jsonl", "prompt_completion": ".jsonl", "csv": ".csv", "datasets": ""}[fmt]
    out = ctx.store.home / "exports" / f"v{f['constitution_id']}-{fmt}-{time.strftime('%Y%m%d-%H%M%S')}{suffix}"
    try:
        r = curate.export(
            ctx.store,
            f["constitution_id"],
            fmt,
            out,
            set_name=f["set_name"],
            owner=owner,
            hub_id=(hub or "").strip() or None,
        )
    except Exception as exc:  # a bad format or filter, and from the hub: no token, network, permissions
        return None, f"**Not exported:** {redact(str(exc))}"
    # the download: the export and its manifest in one archive
    bundle = download_dir() / out.name
    bundle.mkdir()
    for path in (out, Path(r["manifest"])):
        if path.is_dir():
            shutil.copytree(path, bundle / path.name, dirs_exist_ok=True)
        elif path.exists():
            shutil.copy(path, bundle / path.name)
    archive = shutil.make_archive(str(bundle), "zip", bundle)
    c = r["counts"]
    return archive, (
        f"Exported **{c['exported']}** accepted samples of v{r['constitution_id']} "
        f"({r['constitution_name']}) as {fmt} to `{r['path']}`; {c['pending']} pending and "
        f"{c['rejected']} rejected left out." + (f" Pushed to {r['hub_id']}." if "hub_id" in r else "")
    )


def build(ctx: AppContext) -> None:
    c = layout(ctx)
    on = functools.partial(bind, ctx)
    filters, queue, quiet = c["filters"], c["queue"], dict(show_progress="hidden")
    view = [
        c[k]
        for k in (
            "position",
            "badges",
            "prompt",
            "unprompted",
            "prompted",
            "chain",
            "final",
            "note",
            "shown",
            "pos",
            "counters",
            "message",
        )
    ]
    for name in ("version", "prompt_set", "status", "principle", "flag"):
        c[name].input(on(load_queue), filters, [queue, *view], **quiet)
    for name in ("search", "min_len", "max_len"):
        c[name].submit(on(load_queue), filters, [queue, *view], **quiet)
    ctx.blocks.load(on(on_load), None, [c["version"], c["prompt_set"], c["principle"], queue, *view])
    c["version"].input(on(principle_choices), c["version"], c["principle"])
    c["reload"].click(on(version_choices), c["version"], c["version"], **quiet).then(
        on(load_queue), filters, [queue, *view], **quiet
    )

    acting = [c["final"], c["note"], queue, c["pos"], c["shown"], *filters]
    for button, new_status in (("accept", "accepted"), ("reject", "rejected"), ("save", None)):
        c[button].click(on(action, new_status), acting, view, **quiet)
    c["edit"].click(None, js="() => { document.querySelector('#review-final textarea')?.focus(); }")
    for button, step in (("prev", -1), ("nxt", 1)):
        c[button].click(on(move, step), [queue, c["pos"], *filters], view, **quiet)
    # a sampling or revise job, an import or another tab changes the samples: the page's poll follows it
    ctx.watch(
        on(follow),
        [queue, c["pos"], c["shown"], *filters],
        [c["version"], c["principle"], queue, *view],
        on=("versions", "sets", "jobs", "progress:generate", "progress:revise"),
    )

    for trigger in (c["bulk_action"].change, queue.change):
        trigger(on(preview_bulk), [c["bulk_action"], *filters], c["bulk_preview"], **quiet)
    undo_out = [c["last_bulk"], c["undo"], c["bulk_msg"]]
    c["bulk"].click(on(on_bulk), [c["bulk_action"], *filters], undo_out).then(
        on(load_queue), filters, [queue, *view], **quiet
    )
    c["undo"].click(on(on_undo), c["last_bulk"], undo_out).then(on(load_queue), filters, [queue, *view], **quiet)
    c["reflag"].click(on(on_reflag), [queue, c["pos"], *filters], view)
    c["export"].click(on(on_export), [c["export_fmt"], c["hub_id"], *filters], [c["export_file"], c["export_msg"]])
    from ctxdistill.ui import pairs  # the preference pairs, a sub-view of this tab

    with gr.Accordion("Preference pairs", open=False, elem_id="review-pairs"):
        pairs.build(ctx)
