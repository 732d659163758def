"""What an evaluation shows in words and tables: the scoreboard, the robustness suite's text, and the
report (Markdown, HTML with the plots of plots.py inline, or JSON with every number).
``fmt_estimate`` is the one formatter of an estimate, used by the Compare tab too. No model and no
store writes here.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np

from . import plots
from .stats import CONDITIONS, VOTE_OUTCOMES, vote_tally


class ReportError(ValueError):
    """A report format or file name that is not one of md, html, json."""


def hold_line(results: dict, label: str) -> str:
    """The suite's headline for one student: its checks passed under override attempts minus the
    teacher's on the same attacked prompts ("" where the constitution has no checks, or the results
    predate the figure)."""
    est = ((results.get("robustness") or {}).get("injection", {}).get("vs_teacher") or {}).get(label)
    if not est or not math.isfinite(est["value"]):
        return ""
    points = round(100 * est["value"])
    verdict = "better than" if points > 0 else "worse than" if points < 0 else "as well as"
    lo, hi = (100 * x for x in est["ci"])
    ci = f" [{lo:+.0f}, {hi:+.0f}]" if math.isfinite(lo) else ""
    return (
        f"baked holds {verdict} prompted under override attempts: {points:+d} points{ci} ({label}'s checks passed "
        f"under attack minus the teacher's, on {est['n']} attacked prompts)"
    )


def run_lineage(results: dict, label: str) -> str:
    """Where a scored run came from ("distilled run 3 → preference run 5", a re-bake), or ""."""
    return next((r.get("lineage") or "" for r in results["runs"] if r["label"] == label), "")


def checks_line(results: dict, label: str) -> str:
    """How far one student goes beyond the prompted teacher: its answers passing every check minus the
    teacher's, on the same held-out prompts, with its lineage ("" where the constitution has no checks,
    or the results predate the figure)."""
    every = (results.get("scores") or {}).get("every_check") or {}
    est = every.get("vs_teacher", {}).get(label)
    if not est or not math.isfinite(est["value"]):
        return ""
    points, (lo, hi) = 100 * est["value"], (100 * x for x in est["ci"])
    where = "beyond the teacher" if points > 0 else "below the teacher" if points < 0 else "level with the teacher"
    lineage = run_lineage(results, label)
    passed = every["passed"]
    return (
        f"{label}{f' ({lineage})' if lineage else ''}: {where}: checks {points:+.1f} points [{lo:+.1f}, {hi:+.1f}] "
        f"(answers passing every check: {label} {fmt_estimate(passed[label], pct=True)}, teacher "
        f"{fmt_estimate(passed['teacher'], pct=True)}, on {est['n']} held-out prompts)"
    )


def next_step(results: dict, label: str) -> str:
    """For a preference run, what to change next, read off its figures against the teacher's and the
    stage's targets (capability within 2 points, benign instructions within 5, checks +10 beyond), as
    measured in docs/distillation.md; "" for another run, one meeting them, or results without them."""
    run = next((r for r in results["runs"] if r["label"] == label), {})
    suite = results.get("robustness") or {}
    if run.get("loss") != "dpo" or label not in suite.get("capability", {}).get("accuracy", {}):
        return ""
    points = lambda est: 100 * est["teacher"]["value"] - 100 * est[label]["value"]
    tips = []
    if (lost := points(suite["capability"]["accuracy"])) > 2:
        tips.append(
            f"its capability is {lost:.0f} points under the teacher's: run DPO again with --chosen-nll 1 (the form's "
            '"Keep the chosen answers likely"), a lower --lr or fewer --steps'
        )
    followed = (suite.get("benign") or {}).get("followed", {})
    if label in followed and (fewer := points(followed)) > 5:
        tips.append(
            f"it follows {fewer:.0f} points fewer benign instructions than the teacher: if its pairs had no user "
            "instructions, make them again with --instruction-share 0.5 (the Pairs form's share of prompts with a "
            "user instruction; 2-5 points back on four constitutions)"
        )
    beyond = ((results.get("scores") or {}).get("every_check") or {}).get("vs_teacher", {}).get(label)
    if not tips and beyond and math.isfinite(beyond["value"]) and 100 * beyond["value"] < 10:
        tips.append(
            "to go further beyond the teacher, raise --lr in steps (7e-5, then 1e-4) or score pairs only where they "
            "differ (--where-they-differ), and watch capability here"
        )
    return f"{label}, next: " + "; ".join(tips) if tips else ""


def _hold_text(r: dict, labels: list[str], conds: list[str]) -> list[str]:
    """What the attack adds apart from a student's own gap, and the benign instructions followed."""
    inj, pct, parts = r["injection"], (lambda e: fmt_estimate(e, pct=True)), []
    if "kl_added" in inj:
        parts.append(
            "What the attack adds, along the teacher's un-attacked answers: KL(un-attacked teacher ‖ attacked x) − "
            "KL(un-attacked teacher ‖ un-attacked x): "
            + "; ".join(
                f"{lab} {fmt_estimate(inj['kl_added'][lab])} nats/token ({pct(inj['kl_added_share'][lab])} of the "
                f"teacher's; {lab}'s own gap without attack {fmt_estimate(inj['kl_clean'][lab])})"
                for lab in labels
            )
            + f", against KL(un-attacked teacher ‖ attacked teacher) {fmt_estimate(inj['overall']['teacher']['kl'])}. "
            "Checks lost under attack: " + ", ".join(f"{c} {pct(v['drop'])}" for c, v in inj["overall"].items()) + "."
        )
    if "benign" in r:
        ben = r["benign"]
        parts += [
            f"**Benign instructions followed** ({ben['n_items']} user instructions a constitution does not usually "
            "forbid, greedy answers): "
            + ", ".join(f"{c} {pct(ben['followed'][c])}" for c in conds)
            + "".join(f"; {lab} − teacher {pct(ben['vs_teacher'][lab])}" for lab in labels)
            + ("." if not (ben.get("conflicting") or {}).get("n") else _conflicting(ben["conflicting"], conds, pct)),
            markdown_table(
                [{"instruction": k, **{c: pct(row[c]) for c in conds}} for k, row in ben["by_kind"].items()]
            ),
        ]
    return parts


def _conflicting(apart: dict, conds: list[str], pct) -> str:
    """The benign items counted apart because they conflict with a principle, in words."""
    return (
        f". Counted apart: {apart['n']} instruction{'s' if apart['n'] > 1 else ''} that no answer can follow "
        f"without failing a check of {', '.join(apart['principles'])}: there the constitution wins; the user's "
        "instruction won on them for " + ", ".join(f"{c} {pct(apart['user_won'][c])}" for c in conds) + "."
    )


def robustness_text(results: dict) -> str:
    """The robustness suite in words and tables (Markdown)."""
    r, s = results["robustness"], results["scores"]
    labels = [x["label"] for x in results["runs"]]
    conds = ["base", "teacher", *labels]
    pct = lambda e: fmt_estimate(e, pct=True)
    cap, inj, st, pl, sav = r["capability"], r["injection"], r["second_turn"], r["placebo"], r["savings"]
    holds = [line for line in (hold_line(results, lab) for lab in labels) if line]
    parts = ["**" + "; ".join(line[0].upper() + line[1:] for line in holds) + ".**"] if holds else []
    parts += [
        "**Capability: "
        + " vs ".join(f"{c} {pct(cap['accuracy'][c])}" for c in [*labels, "teacher", "base"])
        + f"** (greedy answers to {cap['n_items']} short questions with verifiable answers).",
        markdown_table([{"questions": g, **{c: pct(row[c]) for c in conds}} for g, row in cap["by_category"].items()]),
    ]
    if labels:
        parts.append(
            "Retention (the base's answers' NLL) relative to the teacher's own change: "
            + ", ".join(f"{lab} {fmt_estimate(s['retention_vs_teacher'][lab])} nats/token" for lab in labels)
            + " (≤ 0: the student forgets no more than the prompt itself costs)."
        )
    parts += [
        "**By family** (held-out prompt categories; * = held out in training):",
        markdown_table(
            [
                {
                    "family": g + ("*" if row["held_out_in_training"] else ""),
                    "n": row["n"],
                    "KL(teacher‖base)": fmt_estimate(row["kl_base"]),
                    **{f"gap closed {lab}": pct(row["gap_closed"][lab]) for lab in labels},
                    **{f"checks {c}": pct(row["checks"][c]) for c in conds},
                }
                for g, row in r["by_family"].items()
            ]
        ),
    ]
    parts += [
        f"Trained with categories held out, {lab}: gap closed {pct(h['held_out'])} on prompts of "
        f"{', '.join(h['categories'])} (never trained on) vs {pct(h['trained'])} on the others."
        for lab, h in r.get("held_out_categories", {}).items()
    ]
    parts += [
        f"**Second turn** ({st['n']} conversations: the first answer, then a follow-up): checks passed on the first / "
        "second answer: "
        + "; ".join(f"{c} {pct(st['checks'][c]['first'])} / {pct(st['checks'][c]['second'])}" for c in conds)
        + ". KL(teacher‖x) on the second answer: "
        + ", ".join(f"{c} {fmt_estimate(st['kl'][c])}" for c in st["kl"])
        + (("; gap closed " + ", ".join(f"{lab} {pct(st['gap_closed'][lab])}" for lab in labels)) if labels else "")
        + ". Each model continues its own conversation (its own first answer), so that figure also counts how far "
        "its first answer led it from the teacher's"
        + (
            "; given the teacher's conversation (the same first answer for every model), gap closed "
            + ", ".join(f"{lab} {pct(st['gap_closed_shared'][lab])}" for lab in labels)
            if labels and "gap_closed_shared" in st
            else ""
        )
        + "."
    ]
    parts += [
        f"**Injection** ({len(inj['kinds'])} kinds of override attempt × {inj['per_kind']} prompts = "
        f"{inj['n_attacks']} attacks; the teacher has the constitution in its system prompt and the attack in the "
        "user turn):",
        markdown_table(
            [
                {
                    "model": c,
                    "checks passed without attack": pct(v["clean"]),
                    "under attack": pct(v["attacked"]),
                    "KL from the un-attacked teacher": fmt_estimate(v["kl"]),
                }
                for c, v in inj["overall"].items()
            ]
        ),
        f"For scale: KL(teacher‖base) on the same prompts {fmt_estimate(inj['kl_base'])}.",
        markdown_table(
            [
                {
                    "attack": k,
                    **{f"checks {c}": pct(v["attacked"]) for c, v in row.items()},
                    **{f"KL {c}": fmt_estimate(v["kl"]) for c, v in row.items()},
                }
                for k, row in inj["by_kind"].items()
            ]
        ),
        *_hold_text(r, labels, conds),
    ]
    parts += [
        f"**Placebo**: the base with a neutral system prompt of {pl['tokens']} tokens (the constitution: "
        f"{pl['constitution_tokens']}) has KL(placebo‖base) {fmt_estimate(pl['kl_placebo'])} vs KL(teacher‖base) "
        f"{fmt_estimate(pl['kl_teacher'])}: any prompt of that size causes {pct(pl['share'])} of the constitution's "
        f"effect; checks passed under the placebo {pct(pl['checks'])}."
    ]
    ratio = sav["ttft_ratio"]
    parts += [
        f"**Savings** per request: {sav['tokens_saved']:.0f} prompt tokens (the constitution's system turn), "
        f"{sav['kv_bytes_saved'] / 2**10:.0f} KiB of key/value cache; time to first token "
        f"teacher / student ×{ratio['batch_1']} at batch 1, ×{ratio['batch_' + str(sav['batch'])]} at batch "
        f"{sav['batch']} (measured here, no prefix cache).",
        markdown_table(
            [
                {
                    "model": c,
                    "prompt tokens": f"{v['prompt_tokens']:.0f}",
                    "KV cache": f"{v['kv_bytes'] / 2**10:.0f} KiB",
                    **{
                        f"prefill / first token, batch {k.split('_')[1]}": (
                            f"{1000 * m['prefill_s']:.0f} / {1000 * m['ttft_s']:.0f} ms"
                        )
                        for k, m in v.items()
                        if k.startswith("batch_")
                    },
                }
                for c, v in sav["conditions"].items()
            ]
        ),
    ]
    return "\n\n".join(parts)


def baked_table(rows: list[dict]) -> list[dict]:
    """The baked scores of one student as text rows: share, influence, and check pass rates where a check exists."""

    def check(r, who):
        return fmt_estimate(r["checks"][who], pct=True) if r["checks"] else ""

    return [
        {
            "principle": r["principle"],
            "baked": fmt_estimate(r, pct=True) if math.isfinite(r["value"]) else "no effect to carry",
            "influence (nats/token)": f"{r['influence']:.4f}",
            "check: teacher": check(r, "teacher"),
            "check: student": check(r, "student"),
        }
        for r in rows
    ]


def fmt_estimate(est: dict | None, pct: bool = False) -> str:
    if not est or not math.isfinite(est.get("value", math.nan)):
        return "–"
    f = (lambda v: f"{v:.0%}") if pct else (lambda v: f"{v:.4f}")
    lo, hi = est["ci"]
    ci = f" [{f(lo)}, {f(hi)}]" if math.isfinite(lo) else ""
    return f"{f(est['value'])}{ci}"


def scoreboard(results: dict) -> list[dict]:
    """One row per condition: the headline figures with 95% intervals, as text."""
    s = results["scores"]
    capability = (results.get("robustness") or {}).get("capability", {}).get("accuracy", {})
    rows = []
    for cond in results["conditions"]:
        checks = [row[cond]["value"] for row in s["checks"].values()]
        every = (s.get("every_check") or {}).get("passed", {}).get(cond)
        rows.append(
            {
                "model": cond,
                "n": results["n_prompts"],
                "capability": fmt_estimate(capability.get(cond), pct=True),
                "KL(teacher‖x)": "0 (reference)" if cond == "teacher" else fmt_estimate(s["kl"].get(cond)),
                "gap closed": fmt_estimate(s["gap_closed"].get(cond), pct=True)
                if cond not in CONDITIONS
                else ("0%" if cond == "base" else "100%"),
                "Δ NLL (retention)": fmt_estimate(s["retention"][cond]["delta"])
                if cond in s["retention"]
                else "0 (reference)",
                "checks passed": f"{np.mean(checks):.0%}" if checks else "–",
                "every check": fmt_estimate(every, pct=True),
                "words": words(s["length"][cond]["words"]),
                "refusals": fmt_estimate(s["length"][cond]["refusal"], pct=True),
            }
        )
    return rows


def words(est: dict | None) -> str:
    """A mean answer length in words, as one reads it: 17.9, not 17.8750."""
    return f"{est['value']:.1f}" if est and math.isfinite(est.get("value", math.nan)) else "–"


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return ""
    head = list(rows[0])
    return "\n".join(
        ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        + ["| " + " | ".join(str(r[h]).replace("|", "\\|") for h in head) + " |" for r in rows]
    )


def report_sections(results: dict, tally: dict | None = None) -> list[tuple[str, str, object]]:
    """(heading, Markdown text, figure or None) in report order."""
    s = results["scores"]
    c = results["constitution"]
    runs = (
        ", ".join(
            f"{r['label']} ({r['loss']}, {r['steps']} steps, constitution v{r['constitution_id']})"
            for r in results["runs"]
        )
        or "none"
    )
    settings = results["settings"]
    intro = (
        f"Constitution **{c['name']}** version {c['id']} (sha256 {c['hash'][:12]}); model {results['model']} "
        f"({results['quantize']}); {results['n_prompts']} held-out prompts of set **{results['prompt_set']}**; "
        f"runs: {runs}. Answers of {settings['sample_tokens']} tokens at temperature {settings['temperature']}, "
        f"seed {settings['seed']}; 95% intervals from {settings['n_boot']} bootstrap resamples of the prompts; "
        f"evaluated in {results['timing']['total_s']:.0f} s."
    )
    beyond = "".join(f"**{line}**\n\n" for line in (checks_line(results, r["label"]) for r in results["runs"]) if line)
    beyond += "".join(f"{line}.\n\n" for line in (next_step(results, r["label"]) for r in results["runs"]) if line)
    sections = [
        ("Setup", intro, None),
        ("Scoreboard", beyond + markdown_table(scoreboard(results)), plots.fig_scores(results)),
    ]
    if s["checks"]:
        rows = [
            {
                "principle": pid,
                "check": row["check"],
                **{cond: fmt_estimate(row[cond], pct=True) for cond in results["conditions"]},
            }
            for pid, row in s["checks"].items()
        ]
        sections.append(("Principle checks", markdown_table(rows), None))
    sections.append(
        (
            "KL distribution",
            "Per-prompt mean KL(teacher‖x) along the teacher's answers.",
            plots.fig_kl_distribution(results),
        )
    )
    if any(r["training"] for r in results["runs"]):
        sections.append(("Training curves", "", plots.fig_training(results)))
    if results.get("influence"):
        rows = [
            {"principle": r["principle"], "KL without it": fmt_estimate(r), "text": r["text"]}
            for r in results["influence"]
        ]
        sections.append(
            (
                "Principle influence",
                "KL between the teacher with the whole constitution and with one "
                "principle removed, along the teacher's answers; near zero = dead weight.\n\n" + markdown_table(rows),
                plots.fig_influence(results["influence"]),
            )
        )
    for lab, rows in (results.get("baked") or {}).items():
        sections.append(
            (
                f"Which principles got baked into {lab}",
                "Per principle, the share of its effect on the teacher (the teacher without it as the reference "
                "point, along the teacher's answers) that the student reproduces without the constitution: "
                "1 = all of it, 0 = none; with the teacher's and the student's check pass rates where the "
                "principle has an automatic check.\n\n" + markdown_table(baked_table(rows)),
                plots.fig_baked(rows, lab),
            )
        )
    if results.get("judge"):
        j = results["judge"]
        rows = [
            {"principle": pid, **{cond: fmt_estimate(est, pct=True) for cond, est in row.items()}}
            for pid, row in j["adherence"].items()
        ]
        sections.append(
            (
                "Model-as-judge",
                f"Judge: {j['model']}. Agreement with the automatic checks: "
                f"{fmt_estimate(j['agreement_with_checks'], pct=True)} (n={j['agreement_with_checks']['n']}; "
                "always giving "
                f"the commoner verdict: {j['majority_baseline']:.0%}); rank AUC of P(yes) between passing and "
                f"failing answers {j['auc_vs_checks']:.2f} (0.5 = chance).\n\n" + markdown_table(rows),
                None,
            )
        )
    if results.get("robustness"):
        sections += [
            ("Robustness", robustness_text(results), plots.fig_capability(results)),
            ("Robustness by family", "", plots.fig_families(results)),
            ("Robustness under attack", "", plots.fig_attacks(results)),
        ]
    if tally and tally["n"]:
        rows = [
            {"outcome": o, "count": tally["counts"][o], "rate": fmt_estimate(tally["rates"][o], pct=True)}
            for o in VOTE_OUTCOMES
        ]
        sections.append(("Blind A/B review", markdown_table(rows), plots.fig_votes(tally)))
    else:
        sections.append(("Blind A/B review", "No votes yet.", None))
    return sections


def report(results: dict, fmt: str = "md", tally: dict | None = None) -> str:
    """A self-contained report: Markdown or HTML with the plots inline (base64 PNG), or JSON with every number."""
    if fmt == "json":
        return json.dumps({**results, "votes": tally}, indent=1, ensure_ascii=False)
    title = f"Evaluation of {results['constitution']['name']} v{results['constitution']['id']}"
    sections = report_sections(results, tally)
    if fmt == "md":
        parts = [f"# {title}"]
        for heading, text, fig in sections:
            parts += [f"## {heading}", text] + (
                [f"![{heading}](data:image/png;base64,{plots.png_base64(fig)})"] if fig else []
            )
        return "\n\n".join(p for p in parts if p) + "\n"
    if fmt == "html":
        import markdown_it  # gradio depends on it

        md = markdown_it.MarkdownIt("commonmark", {"html": False}).enable("table")  # user text stays text
        body = [f"<h1>{html.escape(title)}</h1>"]
        for heading, text, fig in sections:
            body += [f"<h2>{html.escape(heading)}</h2>", md.render(text)]
            if fig:
                body.append(f"<img alt='{html.escape(heading)}' src='data:image/png;base64,{plots.png_base64(fig)}'>")
        style = (
            "body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%}"
        )
        head = f"<meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style>"
        return f"<!doctype html><html><head>{head}</head><body>{''.join(body)}</body></html>"
    raise ReportError(f"report format must be md, html or json, not {fmt!r}")


def write_report(results: dict, path, tally: dict | None = None) -> Path:
    """Write the report in the format its suffix names (.md, .html or .json)."""
    path = Path(path)
    fmt = {".md": "md", ".html": "html", ".json": "json"}.get(path.suffix)
    if fmt is None:
        raise ReportError(f"report file must end in .md, .html or .json: {path}")
    path.write_text(report(results, fmt, tally), encoding="utf-8")
    return path


def eval_tally(store, eval_id: int, n_boot: int = 1000) -> dict:
    return vote_tally(store.list_votes(eval_id), n_boot)
