"""The results of one evaluation, in the Compare tab: the scoreboard and its figures, the per-prompt
table with where the student still diverges, which principles got baked, and the robustness suite.
They stay hidden until an evaluation is picked; every view reads the stored results only.
"""

from __future__ import annotations

import functools
import math

import gradio as gr
import pandas as pd

from ctxdistill import plots, report
from ctxdistill.store import NotFound
from ctxdistill.ui.common import AppContext, bind, highlight


def evaluation(ctx: AppContext, eval_id, owner: str) -> dict | None:
    """The visitor's own stored evaluation, or None."""
    if not eval_id:
        return None
    try:
        ev = ctx.store.get_eval(int(eval_id))
    except (NotFound, TypeError, ValueError):
        return None
    return ev if ev["owner"] == owner else None


def per_prompt_table(results: dict, student: str | None, other: str | None) -> pd.DataFrame:
    """One row per prompt: mean KL(teacher‖x) for base and the picked runs, and the answers."""
    cols = {"#": list(range(1, results["n_prompts"] + 1)), "prompt": [p["text"] for p in results["prompts"]]}
    for cond in ("base", student, other):
        if cond:
            cols[f"KL {cond}"] = [round(v, 4) if math.isfinite(v) else None for v in plots.per_prompt_kl(results, cond)]
    for cond in ("base", "teacher", student, other):
        if cond:
            cols[cond] = [p["answers"][cond] for p in results["prompts"]]
    frame = pd.DataFrame(cols)
    key = f"KL {student}" if student else "KL base"
    return frame.sort_values(key, ascending=False, na_position="last")


def influence_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"principle": x["principle"], "KL without it": report.fmt_estimate(x), "n": x["n"], "text": x["text"]}
            for x in rows
        ]
    )


def board_notes(results: dict) -> str:
    """Above the scoreboard: a warning for each scored run trained on another constitution version than the
    one it is scored against, then each run's checks against the teacher's (beyond or below it) and, for a
    preference run, what to change next (report.next_step)."""
    version = results["constitution"]["id"]
    return "".join(
        f"**Other version:** {r['label']} was trained on v{r['constitution_id']} and is scored here against "
        f"the teacher of v{version}.  \n"
        for r in results.get("runs", [])
        if r.get("constitution_id") is not None and r["constitution_id"] != version
    ) + "".join(
        f"{line[0].upper()}{line[1:]}.  \n"
        for r in results.get("runs", [])
        for line in (report.checks_line(results, r["label"]), report.next_step(results, r["label"]))
        if line
    )


def layout() -> dict:
    """The picked evaluation and its scoreboard, figures and per-prompt view (hidden while none is picked)."""
    with gr.Row():
        pick = gr.Dropdown(label="Evaluation", choices=[], elem_id="eval-pick", scale=3)
        student = gr.Dropdown(label="Student", choices=[], elem_id="eval-student", scale=1)
        other = gr.Dropdown(label="Compare with", choices=[], elem_id="eval-other", scale=1)
    with gr.Column(visible=False, elem_id="eval-results") as shown:
        mismatch = gr.Markdown(elem_id="eval-results-mismatch")
        board = gr.Dataframe(label="Scoreboard", interactive=False, wrap=True, elem_id="scoreboard")
        # the figures carry their own titles: a component label would sit on top of them
        scores_plot = gr.Plot(label="Scores with 95% intervals", elem_id="plot-scores")
        with gr.Row():
            dist_plot = gr.Plot(label="KL distribution", elem_id="plot-kl-dist")
            train_plot = gr.Plot(label="Training curves", elem_id="plot-training")
        with gr.Accordion("Per prompt (sorted by the student's KL; click a row)", open=False):
            table = gr.Dataframe(interactive=False, wrap=True, max_height=420, elem_id="per-prompt")
            with gr.Row():
                base_text = gr.Textbox(label="Base (no constitution)", lines=6, interactive=False, elem_id="pp-base")
                teacher_text = gr.Textbox(label="Teacher (with it)", lines=6, interactive=False, elem_id="pp-teacher")
                student_text = gr.Textbox(
                    label="Student (adapter, no constitution)", lines=6, interactive=False, elem_id="pp-student"
                )
            div_student = gr.HighlightedText(
                label="Teacher's answer: where the student still diverges (KL teacher‖student)",
                combine_adjacent=False,
                show_legend=False,
                elem_id="pp-div-student",
                elem_classes=["kl-tokens"],
            )
            div_base = gr.HighlightedText(
                label="…and where the base model diverged (KL teacher‖base)",
                combine_adjacent=False,
                show_legend=False,
                elem_id="pp-div-base",
                elem_classes=["kl-tokens"],
            )
    return dict(
        pick=pick,
        student=student,
        other=other,
        results=shown,
        mismatch=mismatch,
        board=board,
        scores_plot=scores_plot,
        dist_plot=dist_plot,
        train_plot=train_plot,
        table=table,
        base_text=base_text,
        teacher_text=teacher_text,
        student_text=student_text,
        div_student=div_student,
        div_base=div_base,
    )


def baked_layout() -> dict:
    """Which principles got baked into the picked student (baked.py), next to their influence."""
    gr.Markdown(
        "**Which principles got baked** into the picked student: the share of each principle's effect on "
        "the teacher that the student reproduces without the constitution (1 = all of it, 0 = none), with the "
        "teacher's and the student's check pass rates where the principle has an automatic check."
    )
    note = gr.Markdown(elem_id="baked-note")
    with gr.Column(visible=False) as shown:
        plot = gr.Plot(label="Which principles got baked", elem_id="baked-plot")
        table = gr.Dataframe(interactive=False, wrap=True, elem_id="baked-table")
    return dict(baked_note=note, baked_shown=shown, baked_plot=plot, baked_table=table)


def robustness_layout() -> dict:
    """The Robustness section: what baking bought and what it cost (robustness.py)."""
    with gr.Accordion("Robustness", open=True, elem_id="robustness-panel"):
        text = gr.Markdown(
            "Run an evaluation with the robustness suite to see capability, injection resistance, "
            "the second turn, the placebo and the savings here.",
            elem_id="robustness-text",
        )
        with gr.Column(visible=False) as shown:
            capability_plot = gr.Plot(label="Capability with 95% intervals", elem_id="plot-capability")
            families_plot = gr.Plot(label="By prompt family", elem_id="plot-families")
            attacks_plot = gr.Plot(label="By kind of injection", elem_id="plot-attacks")
    return dict(
        robustness_text=text,
        robustness_shown=shown,
        capability_plot=capability_plot,
        families_plot=families_plot,
        attacks_plot=attacks_plot,
    )


def on_pick(ctx: AppContext, eval_id, request: gr.Request):
    ev = evaluation(ctx, eval_id, ctx.owner(request))
    labels = [r["label"] for r in ev["results"]["runs"]] if ev else []
    return (
        gr.update(choices=labels, value=labels[0] if labels else None),
        gr.update(choices=["(none)", *labels[1:]], value="(none)"),
        gr.Column(visible=ev is not None),
        board_notes(ev["results"]) if ev else "",
    )


def views(ctx: AppContext, eval_id, stu, oth, request: gr.Request):
    ev = evaluation(ctx, eval_id, ctx.owner(request))
    if ev is None:  # the influence section keeps what "Measure the draft's principles now" showed
        return None, None, None, None, None, gr.skip(), gr.skip()
    r = ev["results"]
    stu = stu if stu in r["conditions"] else None
    oth = oth if oth in r["conditions"] and oth != stu else None
    picked = [x for x in (stu, oth) if x]
    rows = [row for row in report.scoreboard(r) if row["model"] in ("base", "teacher", *picked)]
    influence = r.get("influence") or []
    return (
        pd.DataFrame(rows),
        plots.fig_scores(r, picked),
        plots.fig_kl_distribution(r, picked),
        plots.fig_training(r, picked),
        per_prompt_table(r, stu, oth),
        plots.fig_influence(influence) if influence else gr.skip(),
        influence_frame(influence) if influence else gr.skip(),
    )


def robustness_views(ctx: AppContext, eval_id, stu, oth, request: gr.Request):
    """The Robustness section of the picked evaluation, for the picked students."""
    ev = evaluation(ctx, eval_id, ctx.owner(request))
    if ev is None or not ev["results"].get("robustness"):
        note = "This evaluation ran without the robustness suite." if ev else "Pick an evaluation."
        return note, gr.Column(visible=False), None, None, None
    r = ev["results"]
    picked = [x for x in (stu, oth) if x in r["conditions"] and x not in ("base", "teacher")]
    return (
        report.robustness_text(r),
        gr.Column(visible=True),
        plots.fig_capability(r, picked),
        plots.fig_families(r, picked),
        plots.fig_attacks(r, picked),
    )


def baked_views(ctx: AppContext, eval_id, stu, request: gr.Request):
    """(note, sorted bars, table) of the principles baked into the picked student."""
    ev = evaluation(ctx, eval_id, ctx.owner(request))
    rows = (ev["results"].get("baked") or {}).get(stu) if ev else None
    if not rows:
        return (
            (
                "Evaluate a run with principle influence on (prompts for principle influence above 0) to see which "
                "principles got baked."
            ),
            gr.Column(visible=False),
            None,
            None,
        )
    return "", gr.Column(visible=True), plots.fig_baked(rows, stu), pd.DataFrame(report.baked_table(rows))


def on_row(ctx: AppContext, eval_id, stu, evt: gr.SelectData, request: gr.Request):
    ev = evaluation(ctx, eval_id, ctx.owner(request))
    if ev is None or evt.row_value is None:
        return "", "", "", [], []
    p = ev["results"]["prompts"][int(evt.row_value[0]) - 1]
    stu = stu if stu in p["answers"] else None
    return (
        p["answers"]["base"],
        p["answers"]["teacher"],
        p["answers"].get(stu, "") if stu else "",
        highlight(p["tokens"], p["kl"][stu]) if stu else [],
        highlight(p["tokens"], p["kl"]["base"]),
    )


def wire(ctx: AppContext, c: dict) -> None:
    """The views follow the picked evaluation, student and comparison (``c``: the tab's components)."""
    on = functools.partial(bind, ctx)
    picked = [c["pick"], c["student"], c["other"]]
    shown = [
        c[name]
        for name in ("board", "scores_plot", "dist_plot", "train_plot", "table", "influence_plot", "influence_table")
    ]
    c["pick"].change(on(on_pick), c["pick"], [c["student"], c["other"], c["results"], c["mismatch"]]).then(
        on(views), picked, shown
    )
    for trigger in (c["student"].input, c["other"].input):
        trigger(on(views), picked, shown)
    suite = [
        c[name] for name in ("robustness_text", "robustness_shown", "capability_plot", "families_plot", "attacks_plot")
    ]
    c["pick"].change(on(robustness_views), picked, suite)
    for trigger in (c["student"].input, c["other"].input):
        trigger(on(robustness_views), picked, suite)
    c["student"].change(
        on(baked_views),
        [c["pick"], c["student"]],
        [c["baked_note"], c["baked_shown"], c["baked_plot"], c["baked_table"]],
    )
    c["table"].select(
        on(on_row),
        [c["pick"], c["student"]],
        [c[name] for name in ("base_text", "teacher_text", "student_text", "div_student", "div_base")],
    )
