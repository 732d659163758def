"""Constitution tab: edit principles or raw YAML, see the exact system prompt and its size,
save immutable versions, browse history and diffs, restore, import and export."""

from __future__ import annotations

import difflib
import functools
import html
import json
import re
from pathlib import Path

import gradio as gr
import pandas as pd

from ctxdistill import constitution as cmod
from ctxdistill.demo import kb
from ctxdistill.models import ContextError, ModelError, check_fits, context_window
from ctxdistill.ui.common import AppContext, bind, download_dir, draft_constitution, error_text

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "assets" / "constitutions"
PRINCIPLE_FIELDS = ("id", "text", "critique", "revision", "check_kind", "check_value")
NO_CHECK = "(none)"
IMPORT_SUFFIXES = (".yaml", ".yml", ".json")
# what views() and principle_fields() return, and all that a new draft re-renders (show_all)
N_VIEWS, N_EVERYTHING = 6, 6 + len(PRINCIPLE_FIELDS) + 3 + 2


def examples() -> dict[str, Path]:
    return {p.stem: p for p in sorted(EXAMPLES_DIR.glob("*.yaml"))}


def _principles_table(draft: dict) -> pd.DataFrame:
    rows = []
    for i, p in enumerate(draft.get("principles") or []):
        check = p.get("check") or {}
        rows.append(
            {
                "#": i + 1,
                "id": p.get("id", ""),
                "text": p.get("text", ""),
                "check": f"{check.get('kind')}: {check.get('value')}" if check else "",
            }
        )
    return pd.DataFrame(rows, columns=["#", "id", "text", "check"])


def word_diff_html(old: str, new: str, old_label: str, new_label: str) -> str:
    """The newer text with the words taken out struck through and the words put in marked, wrapped
    to the panel's width: a change deep in a long line stays in view."""
    a, b = re.split(r"(\s+)", old), re.split(r"(\s+)", new)
    out = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op in ("replace", "delete"):
            out.append(f"<del>{html.escape(''.join(a[i1:i2]))}</del>")
        if op in ("replace", "insert"):
            out.append(f"<ins>{html.escape(''.join(b[j1:j2]))}</ins>")
        if op == "equal":
            out.append(html.escape("".join(a[i1:i2])))
    head = (
        f"<div class='diff-head'><del>{html.escape(old_label)}</del> → <ins>{html.escape(new_label)}</ins></div>"
        if old != new
        else f"<div class='diff-head'>{html.escape(old_label)} and {html.escape(new_label)} are identical</div>"
    )
    return f"<div id='diff-text'>{head}<pre class='word-diff'>{''.join(out)}</pre></div>"


def _choices(draft: dict) -> list[tuple[str, int]]:
    return [(f"{i + 1}. {p.get('id') or '?'}", i) for i, p in enumerate(draft.get("principles") or [])]


def _token_report(ctx: AppContext, rendered: str) -> str:
    try:
        model, tokenizer = ctx.model()
    except ModelError as exc:
        return f"token count unavailable: {exc}"
    used, limit = len(tokenizer.encode(rendered)), context_window(model)
    try:
        check_fits(model, tokenizer, rendered)
        warning = ""
    except ContextError:
        warning = " — **too long for the model's context**"
    return f"**{used}** tokens of the model's {limit}-token context{warning}"


def token_count(ctx: AppContext, draft: dict) -> str:
    return _token_report(ctx, cmod.render(draft_constitution(draft)))


def views(ctx: AppContext, draft: dict, selected: int | None, count_tokens: bool = True):
    """Everything shown from the draft except the fields being typed into (the token count, which
    needs the model, follows page load: see build)."""
    c = draft_constitution(draft)
    rendered = cmod.render(c)
    problems = cmod.validate(c)
    status = "Valid: ready to save." if not problems else "Not saveable yet:\n" + "\n".join(f"- {e}" for e in problems)
    choices = _choices(draft)
    selected = selected if selected is not None and selected < len(choices) else (0 if choices else None)
    return (
        _principles_table(draft),
        gr.update(choices=choices, value=selected),
        cmod.dumps(c),
        rendered,
        _token_report(ctx, rendered) if count_tokens else "counting tokens…",
        status,
    )


def principle_fields(draft: dict, selected: int | None):
    ps = draft.get("principles") or []
    if selected is None or not 0 <= selected < len(ps):
        return ("", "", "", "", NO_CHECK, "")
    p = ps[selected]
    check = p.get("check") or {}
    return (
        p.get("id", ""),
        p.get("text", ""),
        p.get("critique", ""),
        p.get("revision", ""),
        check.get("kind") or NO_CHECK,
        str(check.get("value", "")),
    )


def _history_choices(ctx: AppContext, owner: str, name: str | None):
    versions = ctx.store.list_constitution_versions(name or None, owner=owner)
    return [(f"v{v['id']} · {v['name']} · {v['message'] or 'saved'}", v["id"]) for v in versions]


def layout(ctx: AppContext) -> dict:
    """The tab's components, by name."""
    gr.Markdown(
        "Write the principles the model should follow. The right-hand side shows the exact system "
        "prompt the teacher gets. Every edit is autosaved as a draft; **Save** makes a new version."
    )
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Row():
                name = gr.Textbox(label="Name", elem_id="c-name", scale=1)
                description = gr.Textbox(label="Description", elem_id="c-description", scale=2)
            preamble = gr.Textbox(
                label="Preamble (optional, comes before the principles)", lines=2, elem_id="c-preamble"
            )
            table = gr.Dataframe(
                label="Principles",
                interactive=False,
                wrap=True,
                elem_id="principles",
                column_widths=["6%", "14%", "55%", "25%"],
            )
            with gr.Row(equal_height=True):
                selector = gr.Dropdown(label="Edit principle", choices=[], elem_id="principle-select", scale=3)
                add = gr.Button("Add", elem_id="add-principle", size="sm", min_width=60)
                remove = gr.Button("Remove", elem_id="remove-principle", size="sm", min_width=60)
                up = gr.Button("Move up", elem_id="principle-up", size="sm", min_width=60)
                down = gr.Button("Move down", elem_id="principle-down", size="sm", min_width=60)
            with gr.Group():
                pid = gr.Textbox(label="Id", elem_id="principle-id")
                text = gr.Textbox(label="Principle", lines=2, elem_id="principle-text")
                critique = gr.Textbox(label="Critique request", lines=2, elem_id="principle-critique")
                revision = gr.Textbox(label="Revision request", lines=2, elem_id="principle-revision")
                with gr.Row():
                    check_kind = gr.Dropdown(
                        label="Automatic check",
                        choices=[NO_CHECK, *cmod.CHECK_KINDS],
                        value=NO_CHECK,
                        elem_id="check-kind",
                    )
                    check_value = gr.Textbox(label="Check value", elem_id="check-value")
            with gr.Accordion("Raw YAML", open=False):
                yaml_code = gr.Code(language="yaml", interactive=True, elem_id="yaml")
                apply_yaml = gr.Button("Apply YAML", elem_id="apply-yaml", size="sm")
        with gr.Column(scale=2):
            rendered = gr.Textbox(
                label="System prompt the teacher sees", lines=10, interactive=False, elem_id="rendered"
            )
            tokens = gr.Markdown(elem_id="token-count")
            status = gr.Markdown(elem_id="c-status")
            message = gr.Textbox(label="Version note", placeholder="what changed", elem_id="save-message")
            save = gr.Button("Save version", variant="primary", elem_id="save")
            saved = gr.Markdown(elem_id="save-result")
            # wired in the Compare tab, which shows the result (built after this one)
            ctx.influence_button = gr.Button(
                "Which principles matter? Measure their influence →", size="sm", elem_id="c-influence"
            )
            with gr.Accordion("History and diff", open=True):
                history = gr.Dropdown(label="Version", choices=[], elem_id="history")
                compare = gr.Dropdown(label="Compare with", choices=[], elem_id="compare-to")
                diff = gr.HTML(label="Diff (words taken out struck through, words put in underlined)", elem_id="diff")
                restore = gr.Button("Restore this version", elem_id="restore", size="sm")
            with gr.Accordion("Examples, import, export", open=False):
                example = gr.Dropdown(label="Example", choices=list(examples()), elem_id="example")
                load_example = gr.Button("Load example", elem_id="load-example", size="sm")
                new = gr.Button("New constitution", elem_id="new-constitution", size="sm")
                upload = gr.File(
                    label="Import YAML / JSON / HF recipe JSON",
                    file_types=list(IMPORT_SUFFIXES),
                    type="filepath",
                    elem_id="import-file",
                )
                with gr.Row():
                    export_yaml = gr.Button("Export YAML", size="sm", elem_id="export-yaml")
                    export_json = gr.Button("Export JSON", size="sm", elem_id="export-json")
                exported = gr.File(label="Exported file", interactive=False, elem_id="exported")
    return dict(
        name=name,
        description=description,
        preamble=preamble,
        table=table,
        selector=selector,
        add=add,
        remove=remove,
        up=up,
        down=down,
        pid=pid,
        text=text,
        critique=critique,
        revision=revision,
        check_kind=check_kind,
        check_value=check_value,
        yaml_code=yaml_code,
        new=new,
        apply_yaml=apply_yaml,
        rendered=rendered,
        tokens=tokens,
        status=status,
        message=message,
        save=save,
        saved=saved,
        history=history,
        compare=compare,
        diff=diff,
        restore=restore,
        example=example,
        load_example=load_example,
        upload=upload,
        export_yaml=export_yaml,
        export_json=export_json,
        exported=exported,
    )


def show_all(ctx: AppContext, draft, selected, request: gr.Request, version=None, count_tokens=True):
    """Everything a new draft re-renders (N_EVERYTHING values): views, the principle's fields, the
    top fields and both history lists."""
    sel = selected if isinstance(selected, int) else 0
    choices = _history_choices(ctx, ctx.owner(request), None)
    return (
        *views(ctx, draft, sel, count_tokens),
        *principle_fields(draft, sel),
        draft.get("name", ""),
        draft.get("description", ""),
        draft.get("preamble", ""),
        gr.update(choices=choices, value=version),
        gr.update(choices=choices),
    )


def autosave(ctx: AppContext, draft, version, request) -> None:
    ctx.limit(text_kb=kb(json.dumps(draft, ensure_ascii=False)))  # every edit of the draft comes through here
    ctx.store.save_draft(draft, version, owner=ctx.owner(request))


# .change, not .input: gradio's Textbox fires "input" on key presses only, so a Backspace, a cut, a
# paste or an undo would never reach the draft. "change" fires on every edit, and also when a
# callback sets the field (loading, picking another principle): those change nothing and are skipped.
def unchanged() -> tuple:
    return (gr.skip(),) * (1 + N_VIEWS)


def set_top(ctx: AppContext, field_name: str, value, draft, version, selected, request: gr.Request):
    """An edit of the name, description or preamble."""
    if draft.get(field_name, "") == value:
        return unchanged()
    draft = {**draft, field_name: value}
    autosave(ctx, draft, version, request)
    return draft, *views(ctx, draft, selected)


def set_field(ctx: AppContext, field_name: str, value, draft, version, selected, request: gr.Request):
    """An edit of one field of the selected principle."""
    ps = [dict(p) for p in draft.get("principles") or []]
    if selected is None or not 0 <= selected < len(ps):
        return unchanged()
    p = ps[selected]
    if field_name in ("check_kind", "check_value"):
        shown = principle_fields(draft, selected)[PRINCIPLE_FIELDS.index(field_name)]
        if value == shown:  # as the field shows it (a number check's value as text)
            return unchanged()
        check = dict(p.get("check") or {"kind": "contains", "value": ""})
        check["kind" if field_name == "check_kind" else "value"] = value
        if check["kind"] == NO_CHECK:
            p.pop("check", None)
        else:
            p["check"] = check
    else:
        p[field_name] = value
    if p == draft["principles"][selected]:
        return unchanged()
    draft = {**draft, "principles": ps}
    autosave(ctx, draft, version, request)
    return draft, *views(ctx, draft, selected)


def reshape(ctx: AppContext, action: str, draft, version, selected, request: gr.Request):
    """Add a principle, or remove or move the selected one."""
    ps = [dict(p) for p in draft.get("principles") or []]
    sel = selected if isinstance(selected, int) and 0 <= selected < len(ps) else None
    if action == "add":
        taken = {p.get("id") for p in ps}
        new_id = next(f"p{i}" for i in range(1, len(ps) + 2) if f"p{i}" not in taken)
        ps.append({"id": new_id, "text": "", "critique": "", "revision": ""})
        sel = len(ps) - 1
    elif sel is not None and action == "remove":
        ps.pop(sel)
        sel = min(sel, len(ps) - 1) if ps else None
    elif sel is not None and action in ("up", "down"):
        j = sel - 1 if action == "up" else sel + 1
        if 0 <= j < len(ps):
            ps[sel], ps[j] = ps[j], ps[sel]
            sel = j
    draft = {**draft, "principles": ps}
    autosave(ctx, draft, version, request)
    return draft, *views(ctx, draft, sel), *principle_fields(draft, sel)


def replace_draft(ctx: AppContext, new: cmod.Constitution, version, request, note=""):
    draft = cmod.to_dict(new)
    autosave(ctx, draft, version, request)
    return (draft, version, *show_all(ctx, draft, 0, request, version), note)


def keep_draft(draft, version, note) -> tuple:
    """What a refused replacement returns: the draft as it was, and why."""
    return (draft, version, *[gr.update()] * N_EVERYTHING, note)


def from_yaml(ctx: AppContext, code, draft, version, request: gr.Request):
    ctx.limit(text_kb=kb(code or ""))
    try:
        return replace_draft(ctx, cmod.parse(code, "yaml"), version, request, "YAML applied.")
    except cmod.ConstitutionError as exc:
        return keep_draft(draft, version, error_text(exc))


def from_example(ctx: AppContext, which, draft, version, request: gr.Request):
    if which not in examples():
        return keep_draft(draft, version, error_text("Pick an example first."))
    return replace_draft(
        ctx, cmod.load(examples()[which]), version, request, f"Loaded example {which!r} (not saved yet)."
    )


def new_draft(ctx: AppContext, draft, version, request: gr.Request):
    """A fresh constitution to write: a name and one empty principle, starting no version's lineage."""
    fresh = cmod.Constitution(name="my-constitution", principles=[cmod.Principle("p1", "")])
    return replace_draft(ctx, fresh, None, request, "A new constitution: name it, write its principles, then save.")


def from_upload(ctx: AppContext, path, draft, version, request: gr.Request):
    if not path:
        return keep_draft(draft, version, "")
    path = ctx.upload(path, IMPORT_SUFFIXES)
    try:
        return replace_draft(ctx, cmod.load(path), version, request, f"Imported {Path(path).name} (not saved yet).")
    except cmod.ConstitutionError as exc:
        return keep_draft(draft, version, error_text(exc))


def do_save(ctx: AppContext, draft, version, note, request: gr.Request):
    c = draft_constitution(draft)
    try:
        cmod.ensure_valid(c)
    except cmod.ConstitutionError as exc:
        return version, error_text(exc), gr.update(), gr.update(), gr.update()
    try:
        model, tokenizer = ctx.model()
        check_fits(model, tokenizer, cmod.render(c))
    except ContextError as exc:
        return version, error_text(exc), gr.update(), gr.update(), gr.update()
    except ModelError:
        pass  # the size check needs the tokenizer; saving does not
    owner = ctx.owner(request)
    new_id = ctx.store.save_constitution(
        c.name, cmod.to_dict(c), cmod.content_hash(c), parent_id=version, message=note or "", owner=owner
    )
    ctx.store.save_draft(cmod.to_dict(c), new_id, owner=owner)
    choices = _history_choices(ctx, owner, None)
    same = " (no changes since the last version)" if new_id == version else ""
    return (
        new_id,
        f"Saved as **v{new_id}**{same}.",
        gr.update(choices=choices, value=new_id),
        gr.update(choices=choices),
        "",  # the note was this version's: the next one gets its own
    )


def show_diff(ctx: AppContext, a, b, request: gr.Request):
    if a is None:
        return ""
    text = cmod.dumps(cmod.from_row(ctx.constitution(a, request)))
    if b is None:
        return f"<pre class='word-diff'>{html.escape(text)}</pre>"
    old = cmod.dumps(cmod.from_row(ctx.constitution(b, request)))
    return word_diff_html(old, text, f"v{b}", f"v{a}")


def do_restore(ctx: AppContext, which, draft, version, request: gr.Request):
    if which is None:
        return keep_draft(draft, version, error_text("Pick a version to restore."))
    row = ctx.constitution(which, request)
    c = cmod.from_row(row)
    owner = ctx.owner(request)
    new_id = ctx.store.save_constitution(
        c.name, row["content"], row["hash"], parent_id=version, message=f"restored v{which}", owner=owner
    )
    return replace_draft(ctx, c, new_id, request, f"Restored v{which} as **v{new_id}**.")


def do_export(ctx: AppContext, fmt: str, draft):
    c = draft_constitution(draft)
    safe = "".join(ch for ch in c.name if ch.isalnum() or ch in "-_") or "constitution"
    path = download_dir() / f"{safe}.{fmt}"
    path.write_text(cmod.dumps(c, fmt), encoding="utf-8")
    return str(path)


def on_load(ctx: AppContext, request: gr.Request):
    owner = ctx.owner(request)
    row = ctx.store.get_draft(owner)
    if row is not None:
        draft, version = row["content"], row["base_id"]
    else:
        versions = ctx.store.list_constitution_versions(None, owner=owner)
        if versions:
            draft, version = versions[0]["content"], versions[0]["id"]
        else:
            draft, version = cmod.to_dict(cmod.load(examples()["pirate"])), None
    return (draft, version, *show_all(ctx, draft, 0, request, version, count_tokens=False))


def history_lists(ctx: AppContext, picked, other, request: gr.Request):
    """Versions saved elsewhere (another tab, browser or command) join the history lists."""
    choices = _history_choices(ctx, ctx.owner(request), None)
    ids = [c[1] for c in choices]
    return (
        gr.update(choices=choices, value=picked if picked in ids else None),
        gr.update(choices=choices, value=other if other in ids else None),
    )


def build(ctx: AppContext) -> None:
    c = layout(ctx)
    on = functools.partial(bind, ctx)
    views_out = [c[k] for k in ("table", "selector", "yaml_code", "rendered", "tokens", "status")]
    fields_out = [c[k] for k in ("pid", "text", "critique", "revision", "check_kind", "check_value")]
    everything = [*views_out, *fields_out, c["name"], c["description"], c["preamble"], c["history"], c["compare"]]
    state = [ctx.draft, ctx.version]
    for field_name in ("name", "description", "preamble"):
        box = c[field_name]
        box.change(
            on(set_top, field_name),
            [box, *state, c["selector"]],
            [ctx.draft, *views_out],
            trigger_mode="always_last",
            show_progress="hidden",
        )
    for box, field_name in zip(fields_out, PRINCIPLE_FIELDS):
        box.change(
            on(set_field, field_name),
            [box, *state, c["selector"]],
            [ctx.draft, *views_out],
            trigger_mode="always_last",
            show_progress="hidden",
        )
    c["selector"].input(principle_fields, [ctx.draft, c["selector"]], fields_out)
    for action in ("add", "remove", "up", "down"):
        c[action].click(on(reshape, action), [*state, c["selector"]], [ctx.draft, *views_out, *fields_out])
    replaced = [*state, *everything, c["saved"]]
    c["apply_yaml"].click(on(from_yaml), [c["yaml_code"], *state], replaced)
    c["load_example"].click(on(from_example), [c["example"], *state], replaced)
    c["upload"].upload(on(from_upload), [c["upload"], *state], replaced)
    saved = [ctx.version, c["saved"], c["history"], c["compare"], c["message"]]
    c["save"].click(on(do_save), [*state, c["message"]], saved).then(**ctx.poll_now)  # the other tabs' version lists
    c["new"].click(on(new_draft), state, replaced)
    for picker in (c["history"], c["compare"]):
        picker.change(on(show_diff), [c["history"], c["compare"]], c["diff"])
    c["restore"].click(on(do_restore), [c["history"], *state], replaced)
    c["export_yaml"].click(on(do_export, "yaml"), ctx.draft, c["exported"])
    c["export_json"].click(on(do_export, "json"), ctx.draft, c["exported"])
    # the draft reaches the page at once, its token count when the model is there: the first load of the
    # model can take minutes (a Space downloads it) or fail, and every tab (Preview too) uses the draft
    ctx.blocks.load(on(on_load), None, [*state, *everything]).then(
        on(token_count), ctx.draft, c["tokens"], show_progress="hidden"
    )
    ctx.watch(on(history_lists), [c["history"], c["compare"]], [c["history"], c["compare"]], on=("versions",))
