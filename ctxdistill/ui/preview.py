"""Preview tab: the same prompt with and without the constitution, streamed side by side, and
what the constitution changes token by token (per-token KL along the teacher's answer)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import gradio as gr
import pandas as pd

from ctxdistill import constitution as cmod
from ctxdistill.adapters import STRENGTH_RANGE, AdapterError, check_strength, merged_student
from ctxdistill.demo import gpu, kb
from ctxdistill.models import ModelError, check_fits, default_models_dir, load_model_cached
from ctxdistill.sampling import MAX_NEW_TOKENS_LIMIT, SamplingConfig, generate_rows, preview_stream
from ctxdistill.ui.common import (
    MODEL_QUEUE,
    AppContext,
    adapter_choices,
    adapter_dir,
    bind,
    draft_constitution,
    highlight,
    prompt_choices,
    slider,
)

SAMPLE_SEPARATOR = "\n\n— sample {k} —\n"
EMPTY_PROMPT = "**Type a prompt** (or pick one from the prompt set), then press Preview."
# the strength dial's number box sends its value on blur: Enter there leaves the box, so the student
# answers again as it does when the dial is dragged
ENTER_JS = """
() => {
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && e.target.type === 'number' && e.target.closest('#student-strength')) e.target.blur();
  });
}
"""


def _join(samples: list[str]) -> str:
    return "".join((SAMPLE_SEPARATOR.format(k=k + 1) if k else "") + s for k, s in enumerate(samples))


def system_prompt(ctx: AppContext, draft_or_text, max_new_tokens: int) -> str:
    """Validate the constitution and that it fits in the model's context; return its system prompt.
    The model comes first: when it cannot be had (a Space whose hub is unreachable) that is what to say,
    whatever the draft, which may not even have reached a page still loading."""
    model, tokenizer = ctx.model()
    c = cmod.parse(draft_or_text) if isinstance(draft_or_text, str) else draft_constitution(draft_or_text)
    cmod.ensure_valid(c)
    rendered = cmod.render(c)
    check_fits(model, tokenizer, rendered, max_new_tokens)
    return rendered


@gpu
def _stream(spec, models_dir, system: str, prompts: list[str], cfg: SamplingConfig):
    """The model work alone, with picklable arguments, so ZeroGPU can run it on its GPU."""
    model, tokenizer = load_model_cached(spec, models_dir=models_dir)
    yield from preview_stream(model, tokenizer, system, prompts, cfg)


@functools.lru_cache(maxsize=1)
def _merged(spec, models_dir, adapter: str, stamp: float, strength: float):
    model, _ = load_model_cached(spec, models_dir=models_dir)
    return merged_student(model, adapter, strength)


@gpu
def _student(spec, models_dir, adapter: str, prompt: str, cfg: SamplingConfig, strength: float) -> list[str]:
    """The student's answers: base + the run's adapter at ``strength``, without the constitution."""
    _, tokenizer = load_model_cached(spec, models_dir=models_dir)
    stamp = (Path(adapter) / "adapter_model.safetensors").stat().st_mtime if Path(adapter).is_dir() else 0.0
    model = _merged(spec, str(models_dir), adapter, stamp, strength)
    ids = generate_rows(model, tokenizer, [(None, prompt)] * cfg.n, cfg, sample_index=list(range(cfg.n)))
    return [tokenizer.decode(a, skip_special_tokens=True) for a in ids]


def run_preview(ctx: AppContext, constitution, prompts: list[str], cfg: SamplingConfig):
    """Yield Preview snapshots; every user-fixable problem becomes a gr.Error with a clear message."""
    text = constitution if isinstance(constitution, str) else json.dumps(constitution or {})
    ctx.limit(
        max_new_tokens=cfg.max_new_tokens,
        samples=cfg.n,
        prompts=len(prompts),
        text_kb=max([kb(text), *(kb(p or "") for p in prompts)]),
    )
    try:
        cfg.validate()
        if not prompts or any(not (p or "").strip() for p in prompts):
            raise ValueError("The prompt is empty: type a question or pick one from the prompt set.")
        system = system_prompt(ctx, constitution, cfg.max_new_tokens)
        yield from _stream(ctx.model_spec, default_models_dir(ctx.home), system, prompts, cfg)
    except (ValueError, ModelError) as exc:  # ConstitutionError is a ValueError
        raise gr.Error(str(exc)) from exc


def sampling_config(greedy, temperature, top_p, seed, max_new_tokens, samples) -> SamplingConfig:
    return SamplingConfig(
        max_new_tokens=int(max_new_tokens),
        temperature=0.0 if greedy else float(temperature),
        top_p=float(top_p),
        seed=int(seed),
        n=int(samples),
    )


def sampling_active(greedy: bool):
    """Temperature and Top-p take effect only when Greedy is off."""
    return gr.Slider(interactive=not greedy), gr.Slider(interactive=not greedy)


def layout(ctx: AppContext) -> dict:
    """The tab's components, by name."""
    caps = ctx.caps
    gr.Markdown(
        "Ask the model the same thing **with** the constitution in its prompt (the teacher) and "
        "**without** it. The highlighted answer shows where the constitution changed the model's "
        "next-token distribution most (per-token KL, nats)."
    )
    with gr.Row():
        prompt = gr.Textbox(label="Prompt", lines=2, elem_id="prompt", scale=3)
        pick = gr.Dropdown(label="…or pick from the prompt set", choices=[], elem_id="prompt-pick", scale=2)
    with gr.Accordion("Sampling", open=False):
        with gr.Row():
            greedy = gr.Checkbox(label="Greedy", value=True, elem_id="greedy")
            # greedy decoding ignores both: they take effect when Greedy is off
            temperature = gr.Slider(
                0.05, 2.0, value=0.7, step=0.05, label="Temperature", interactive=False, elem_id="temperature"
            )
            top_p = gr.Slider(0.05, 1.0, value=0.95, step=0.05, label="Top-p", interactive=False, elem_id="top-p")
        with gr.Row():
            seed = gr.Number(value=0, precision=0, label="Seed", elem_id="seed")
            max_new = slider(
                1,
                caps.max_new_tokens if caps else MAX_NEW_TOKENS_LIMIT,
                value=64,
                step=1,
                label="Max new tokens",
                elem_id="max-new-tokens",
            )
            samples = slider(
                1, caps.samples if caps else 8, value=1, step=1, label="Samples per prompt", elem_id="samples"
            )
    run = gr.Button("Preview", variant="primary", elem_id="run-preview")
    with gr.Row():
        prompted = gr.Textbox(label="With the constitution (teacher)", lines=8, interactive=False, elem_id="prompted")
        unprompted = gr.Textbox(label="Without it (base model)", lines=8, interactive=False, elem_id="unprompted")
        student = gr.Textbox(
            label="Student (base + adapter, no constitution)", lines=8, interactive=False, elem_id="student"
        )
    with gr.Row():
        student_run = gr.Dropdown(
            label="Student: a finished training run's adapter (third column)",
            choices=[],
            elem_id="student-run",
            scale=2,
        )
        strength = gr.Slider(
            *STRENGTH_RANGE,
            value=1.0,
            step=0.05,
            label="Student strength (0 = base model, 1 = as trained)",
            elem_id="student-strength",
            scale=1,
        )
    divergence = gr.HighlightedText(
        label="What the constitution changes (darker = larger KL)",
        combine_adjacent=False,
        show_legend=False,
        elem_id="divergence",
        elem_classes=["kl-tokens"],
    )
    mean = gr.Markdown(elem_id="mean-kl")
    with gr.Accordion("Batch preview", open=False):
        with gr.Row():
            n_batch = slider(
                1,
                min(64, caps.prompts) if caps else 64,
                value=8,
                step=1,
                label="Prompts from the set",
                elem_id="batch-n",
            )
            split = gr.Radio(["train", "heldout"], value="heldout", label="Split", elem_id="batch-split")
            run_batch = gr.Button("Preview batch", elem_id="run-batch")
        table = gr.Dataframe(
            headers=["prompt", "with constitution", "without", "mean KL"],
            wrap=True,
            interactive=False,
            elem_id="batch-table",
        )
    return dict(
        prompt=prompt,
        pick=pick,
        settings=[greedy, temperature, top_p, seed, max_new, samples],
        run=run,
        prompted=prompted,
        unprompted=unprompted,
        student=student,
        student_run=student_run,
        strength=strength,
        divergence=divergence,
        mean=mean,
        n_batch=n_batch,
        split=split,
        run_batch=run_batch,
        table=table,
    )


def student_of(ctx: AppContext, run_id, strength, request: gr.Request) -> tuple[str, float]:
    """(adapter directory, strength) of the picked run, or gr.Error: a strength outside its range."""
    # the browser sends a run id; the adapter directory comes from the visitor's own run
    adapter = str(adapter_dir(ctx, ctx.job(run_id, request)))
    try:
        return adapter, check_strength(strength)
    except AdapterError as exc:
        raise gr.Error(str(exc)) from exc


def student_answers(ctx: AppContext, student: tuple[str, float], text: str, cfg: SamplingConfig) -> str:
    """The student (``student_of``) answering ``text``, or gr.Error (bad sampling settings, an adapter
    that does not load)."""
    try:
        cfg.validate()
        return _join(_student(ctx.model_spec, default_models_dir(ctx.home), student[0], text, cfg, student[1]))
    except (ValueError, ModelError, AdapterError) as exc:
        raise gr.Error(str(exc)) from exc


def single(
    ctx: AppContext, draft, text, run_id, strength, request: gr.Request, *values
):  # gradio injects a Request only before *args
    """One prompt: both answers streamed, the KL highlight, then the picked run's student at the dial's strength."""
    if not (text or "").strip():  # one message where the answers go, not an error on every output
        yield "", "", "", [], EMPTY_PROMPT
        return
    student = student_of(ctx, run_id, strength, request) if run_id else None
    cfg = sampling_config(*values)
    for result in run_preview(ctx, draft, [text], cfg):
        pieces = highlight(result.tokens[0][0], result.kl[0][0]) if result.done else []
        summary = (
            (
                f"**Mean KL:** {result.mean_kl:.3f} nats/token over {sum(len(k) for k in result.kl[0])} "
                "tokens of the teacher's answer"
            )
            if result.done
            else "generating…"
        )
        waiting = "generating…" if student else "pick a training run to see its student"
        yield _join(result.prompted[0]), _join(result.unprompted[0]), waiting, pieces, summary
    if student:
        yield (
            _join(result.prompted[0]),
            _join(result.unprompted[0]),
            student_answers(ctx, student, text, cfg),
            pieces,
            summary,
        )


def restrength(ctx: AppContext, text, run_id, strength, request: gr.Request, *values):
    """The dial moved: the student column again, at the new strength (the other columns stay)."""
    if not run_id or not (text or "").strip():
        return gr.skip()
    cfg = sampling_config(*values)
    ctx.limit(max_new_tokens=cfg.max_new_tokens, samples=cfg.n, text_kb=kb(text))
    return student_answers(ctx, student_of(ctx, run_id, strength, request), text, cfg)


def batch(ctx: AppContext, draft, n, which_split, request: gr.Request, *values):
    """The first n prompts of a split, both answers and their mean KL, as a table."""
    texts = prompt_choices(ctx, ctx.owner(request), which_split)[: int(n)]
    if not texts:
        raise gr.Error(f"The prompt set has no {which_split} prompts.")
    cfg = sampling_config(*values)
    for result in run_preview(ctx, draft, texts, cfg):
        kl = [[sum(k) / len(k) if k else 0.0 for k in per] for per in result.kl] if result.done else None
        yield pd.DataFrame(
            {
                "prompt": result.prompts,
                "with constitution": [_join(a) for a in result.prompted],
                "without": [_join(b) for b in result.unprompted],
                "mean KL": [round(sum(k) / len(k), 3) for k in kl] if kl else [None] * len(texts),
            }
        )


def refresh_choices(ctx: AppContext, request: gr.Request):
    return gr.update(choices=prompt_choices(ctx, ctx.owner(request)))


def refresh_students(ctx: AppContext, current, request: gr.Request):
    choices = adapter_choices(ctx, ctx.owner(request))
    return gr.update(choices=choices, value=current if current in [c[1] for c in choices] else None)


def preview_api(
    ctx: AppContext,
    constitution: str,
    prompt: str,
    samples: int = 1,
    seed: int = 0,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
) -> dict:
    """Answers with and without a constitution (YAML or JSON text), and the mean per-token KL."""
    cfg = SamplingConfig(
        max_new_tokens=int(max_new_tokens), temperature=float(temperature), seed=int(seed), n=int(samples)
    )
    *_, result = run_preview(ctx, constitution, [prompt], cfg)
    out = result.to_json()
    return {"prompted": out["prompted"], "unprompted": out["unprompted"], "mean_kl": out["mean_kl"]}


def build(ctx: AppContext) -> None:
    c = layout(ctx)
    on = functools.partial(bind, ctx)
    model = dict(concurrency_id=MODEL_QUEUE, concurrency_limit=1)
    c["pick"].input(lambda text: text, c["pick"], c["prompt"])
    greedy, temperature, top_p = c["settings"][:3]
    greedy.change(sampling_active, greedy, [temperature, top_p], queue=False, show_progress="hidden")
    ctx.blocks.load(None, None, None, js=ENTER_JS)
    answers = [c["prompted"], c["unprompted"], c["student"], c["divergence"], c["mean"]]
    for event in (c["run"].click, c["prompt"].submit):
        event(on(single), [ctx.draft, c["prompt"], c["student_run"], c["strength"], *c["settings"]], answers, **model)
    c["strength"].release(
        on(restrength), [c["prompt"], c["student_run"], c["strength"], *c["settings"]], c["student"], **model
    )
    c["run_batch"].click(on(batch), [ctx.draft, c["n_batch"], c["split"], *c["settings"]], c["table"], **model)
    # both lists follow the store through the page's poll (ui/poll.py): prompt sets, and runs that finish
    ctx.watch(on(refresh_choices), None, c["pick"], on=("sets",))
    ctx.watch(on(refresh_students), c["student_run"], c["student_run"], on=("jobs",))
    gr.api(on(preview_api), api_name="preview", **model)
