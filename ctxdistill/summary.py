"""What one evaluation says, laid out: the results (``layout``, every number an evaluation returns
and stores), and read back from them for one student, the figures the CLI and a job's result show
(``headline``) and the section of its model card (``card_section``). The full report, with its
plots, is report.py. No model here.
"""

from __future__ import annotations

from .report import checks_line, fmt_estimate, hold_line, markdown_table, run_lineage
from .train_config import HOLD_FIELDS


def layout(
    cfg,
    the_plan,
    system: str,
    chosen,
    labels: list[str],
    answers: dict,
    teacher_tokens: list[list[str]],
    kl: dict,
    scores: dict,
    timing: dict,
    influence: list,
    baked: dict,
    judge,
    suite,
) -> dict:
    """The results of an evaluation: the setup, every score, each prompt's answers and per-token KL, and the
    robustness suite's figures (with its by-family and held-out breakdowns from the per-prompt figures)."""
    from . import robustness
    from .constitution import content_hash
    from .mix import categories

    c, prompts, runs, b = the_plan.constitution, the_plan.prompts, the_plan.runs, cfg.n_boot
    conditions = ["base", "teacher", *labels]
    results = {
        "constitution": {
            "id": the_plan.constitution_row["id"],
            "name": c.name,
            "hash": content_hash(c),
            "system_prompt": system,
        },
        "prompt_set": cfg.prompt_set,
        "retention_set": cfg.retention_set or cfg.prompt_set,
        "n_prompts": len(prompts),
        "model": cfg.model or "embedded SmolLM2-135M-Instruct",
        "quantize": chosen.quantize,
        "precision": chosen.compute,
        "settings": cfg.to_dict(),
        "runs": [
            {
                "run": r["run"],
                "label": lab,
                "constitution_id": r["config"].get("constitution_id"),
                "loss": "dpo" if r["kind"] == "dpo" else r["config"].get("loss"),
                "lineage": (r["info"].get("lineage") or {}).get("text", ""),
                "data": r["config"].get("data"),
                "steps": r["config"].get("steps"),
                "augmentations": {k: r["config"][k] for k in HOLD_FIELDS if r["config"].get(k)},
                "trained_on_this_constitution": r["config"].get("constitution_id") == cfg.constitution_id,
                "training": r["training"],
            }
            for r, lab in zip(runs, labels)
        ],
        "conditions": conditions,
        "scores": scores,
        "prompts": [
            {
                "id": p["id"],
                "text": p["text"],
                "category": p.get("category", ""),
                "answers": {cond: answers[cond][i] for cond in conditions},
                "tokens": teacher_tokens[i],
                "kl": {cond: kl[cond][i] for cond in kl},
            }
            for i, p in enumerate(prompts)
        ],
        "influence": influence,
        "baked": baked,
        "judge": judge,
        "timing": {k: round(v, 2) for k, v in timing.items()},
    }
    if suite:
        held_out = {lab: categories(str(r["config"].get("heldout_categories") or "")) for r, lab in zip(runs, labels)}
        results["robustness"] = {
            **suite,
            "by_family": robustness.by_family(c, results["prompts"], labels, b, held_out),
            "held_out_categories": robustness.held_out_gap(results["prompts"], held_out, b),
        }
    return results


def headline(results: dict, run_label: str | None = None) -> dict:
    """The figures the CLI prints for one student (the first run unless named)."""
    scores = results["scores"]
    lab = run_label or (results["runs"][0]["label"] if results["runs"] else None)
    value = lambda est: est["value"] if est else None
    out = {
        "kl_base": value(scores["kl"]["base"]),
        "kl_student": value(scores["kl"].get(lab)),
        "gap_closed": value(scores["gap_closed"].get(lab)),
        "n_prompts": results["n_prompts"],
        "run": lab,
        "checks": {
            pid: {cond: value(row.get(cond)) for cond in ("base", "teacher", lab) if cond in row}
            for pid, row in scores["checks"].items()
        },
    }
    ret = scores["retention"].get(lab)
    out["retention"] = (
        {"nll_base": value(ret["nll_base"]), "nll_student": value(ret["nll"]), "delta": value(ret["delta"])}
        if ret
        else {}
    )
    out["intervals"] = {
        "kl_base": scores["kl"]["base"]["ci"],
        **({"kl_student": scores["kl"][lab]["ci"], "gap_closed": scores["gap_closed"][lab]["ci"]} if lab else {}),
    }
    every = scores.get("every_check") or {}
    if every and lab:
        out["every_check"] = {
            "passed": {cond: every["passed"][cond] for cond in ("base", "teacher", lab)},
            "vs_teacher": every["vs_teacher"][lab],
            "line": checks_line(results, lab),
        }
    out["seconds"] = results["timing"]["total_s"]
    out.update(suite_headline(results, lab))
    return out


def card_section(results: dict, run_label: str, eval_id: int) -> str:
    """The evaluation figures of one run, as a Markdown section of its model card."""
    s = results["scores"]
    rows = [
        ("KL(teacher‖base), nats/token", fmt_estimate(s["kl"]["base"])),
        ("KL(teacher‖student), nats/token", fmt_estimate(s["kl"][run_label])),
        ("KL gap closed", fmt_estimate(s["gap_closed"][run_label], pct=True)),
        ("retention: Δ NLL of the base's answers", fmt_estimate(s["retention"][run_label]["delta"])),
    ]
    rows += [
        (
            f"check {pid} ({row['check']}): base / teacher / student",
            " / ".join(fmt_estimate(row[c], pct=True) for c in ("base", "teacher", run_label)),
        )
        for pid, row in s["checks"].items()
    ]
    every = s.get("every_check") or {}
    if every:
        rows.append(
            (
                "answers passing every check: base / teacher / student (student − teacher)",
                " / ".join(fmt_estimate(every["passed"][c], pct=True) for c in ("base", "teacher", run_label))
                + f" ({100 * every['vs_teacher'][run_label]['value']:+.1f} points)",
            )
        )
    lineage = run_lineage(results, run_label)
    if lineage:
        rows.append(("lineage", lineage))
    rows += [
        (f"baked {r['principle']}: share of its effect carried", fmt_estimate(r, pct=True))
        for r in results.get("baked", {}).get(run_label, [])
    ]
    rows += suite_card_rows(results, run_label)
    c = results["constitution"]
    return "\n".join(
        [
            f"## Evaluation (ctxdistill eval {eval_id})",
            "",
            f"On {results['n_prompts']} held-out prompts of set {results['prompt_set']!r}, constitution "
            f"{c['name']} version {c['id']}; 95% bootstrap intervals in brackets.",
            "",
            markdown_table([{"figure": a, "value": b} for a, b in rows]),
        ]
    )


def suite_headline(results: dict, label: str | None) -> dict:
    """The suite's figures for one student: capability, injection, second turn, placebo and savings."""
    r = results.get("robustness")
    if not r:
        return {}
    value = lambda e: e["value"] if e else None
    cap = r["capability"]["accuracy"]
    inj = r["injection"]["overall"]
    conds = [c for c in ("base", "teacher", label) if c in cap]
    return {
        "capability": {c: value(cap[c]) for c in conds},
        "capability_intervals": {c: cap[c]["ci"] for c in conds},
        "retention_vs_teacher": value(results["scores"].get("retention_vs_teacher", {}).get(label)),
        "injection": {
            c: {"clean": value(inj[c]["clean"]), "attacked": value(inj[c]["attacked"]), "kl": value(inj[c]["kl"])}
            for c in ("teacher", label)
            if c in inj
        },
        "second_turn": {
            c: value(r["second_turn"]["checks"][c]["second"])
            for c in ("teacher", label)
            if c in r["second_turn"]["checks"]
        },
        "placebo_share": value(r["placebo"]["share"]),
        "tokens_saved": r["savings"]["tokens_saved"],
        "kv_bytes_saved": r["savings"]["kv_bytes_saved"],
        "ttft_ratio": r["savings"]["ttft_ratio"],
        "hold": hold_figures(results, label),
    }


def hold_figures(results: dict, label: str | None) -> dict:
    """Whether the student's behaviour holds, each figure an estimate {"value", "ci", "n"} (None where
    undefined): checks passed under attack minus the teacher's ("attacked_vs_teacher", the headline
    "line"), checks lost under attack ("drop"), KL(un-attacked teacher ‖ attacked student) minus
    KL(un-attacked teacher ‖ un-attacked student) ("kl_added", nats/token; "kl_added_share" of
    "kl_teacher_attacked") beside the student's own gap on those prompts ("kl_student_clean"), the
    second turn's gap closed (each model in its own conversation, and "_shared": in the teacher's) with
    the KL it is read from in the teacher's conversation ("second_turn_kl_shared": base and student,
    nats/token; the history already carries much of the behaviour, so the base's is small there) beside
    the first turn's ("first_turn_kl"), and the benign instructions followed (and the student minus the
    teacher)."""
    r = results.get("robustness") or {}
    inj, ben, st = r.get("injection", {}), r.get("benign", {}), r.get("second_turn", {})
    if "kl_added" not in inj or label not in inj["kl_added"]:
        return {}
    return {
        "line": hold_line(results, label),
        "attacked_vs_teacher": inj["vs_teacher"][label],
        "drop": {c: inj["overall"][c]["drop"] for c in ("teacher", label)},
        "kl_added": inj["kl_added"][label],
        "kl_added_share": inj["kl_added_share"][label],
        "kl_student_clean": inj["kl_clean"][label],
        "kl_teacher_attacked": inj["overall"]["teacher"]["kl"],
        "second_turn_gap_closed": st["gap_closed"][label],
        "second_turn_gap_closed_shared": (st.get("gap_closed_shared") or {}).get(label),
        "second_turn_kl_shared": {c: st["kl_shared"][c] for c in ("base", label)} if "kl_shared" in st else {},
        "first_turn_kl": {c: results["scores"]["kl"][c] for c in ("base", label)},
        "benign": {c: ben["followed"][c] for c in ("base", "teacher", label)} if ben else {},
        "benign_vs_teacher": ben["vs_teacher"][label] if ben else None,
    }


def suite_card_rows(results: dict, label: str) -> list[tuple[str, str]]:
    """(figure, value) rows of the suite for a model card."""
    r = results.get("robustness")
    if not r:
        return []
    cap, inj, sav = r["capability"]["accuracy"], r["injection"]["overall"], r["savings"]
    pct = lambda e: fmt_estimate(e, pct=True)
    rows = [
        ("capability accuracy: base / teacher / student", " / ".join(pct(cap[c]) for c in ("base", "teacher", label))),
        (
            "retention vs the teacher's own change, Δ NLL",
            fmt_estimate(results["scores"]["retention_vs_teacher"].get(label)),
        ),
    ]
    if inj["teacher"]["clean"]:
        rows += [
            (
                f"checks passed under attack ({r['injection']['n_attacks']} attacks): teacher / student",
                f"{pct(inj['teacher']['attacked'])} / {pct(inj[label]['attacked'])} (without: "
                f"{pct(inj['teacher']['clean'])} / {pct(inj[label]['clean'])})",
            )
        ]
    rows += [
        (
            "KL from the un-attacked teacher under attack: teacher / student",
            f"{fmt_estimate(inj['teacher']['kl'])} / {fmt_estimate(inj[label]['kl'])}",
        ),
        *_hold_rows(results, label),
        ("placebo: share of KL(teacher‖base) a neutral prompt causes", pct(r["placebo"]["share"])),
        ("prompt tokens saved per request", f"{sav['tokens_saved']:.0f}"),
        ("time to first token: the teacher's over the student's (batch 1)", f"×{sav['ttft_ratio']['batch_1']}"),
    ]
    return rows


def _hold_rows(results: dict, label: str) -> list[tuple[str, str]]:
    """(figure, value) rows of whether the behaviour holds, and what the run did to make it hold."""
    hold = hold_figures(results, label)
    run = next((r for r in results["runs"] if r["label"] == label), {})
    rows = []
    if run.get("augmentations"):
        rows.append(("trained to hold with", ", ".join(f"{k} {v}" for k, v in run["augmentations"].items())))
    if not hold:
        return rows
    pct = lambda e: fmt_estimate(e, pct=True)
    if hold["line"]:
        rows.append(("under override attempts", hold["line"]))
    rows += [
        (
            "what the attack adds to KL(teacher‖student), nats/token: student (its own gap without attack) / "
            "KL(teacher‖attacked teacher)",
            f"{fmt_estimate(hold['kl_added'])} ({fmt_estimate(hold['kl_student_clean'])}) / "
            f"{fmt_estimate(hold['kl_teacher_attacked'])}",
        ),
        (
            "second turn: KL gap closed on the answer to a follow-up, in the teacher's conversation / in its own",
            f"{pct(hold['second_turn_gap_closed_shared'])} / {pct(hold['second_turn_gap_closed'])}",
        ),
    ]
    if hold["second_turn_kl_shared"]:
        rows.append(
            (
                "KL(teacher‖x) left, nats/token: second turn in the teacher's conversation, base / student "
                "(first turn, base / student)",
                " / ".join(fmt_estimate(hold["second_turn_kl_shared"][c]) for c in ("base", label))
                + f" ({' / '.join(fmt_estimate(hold['first_turn_kl'][c]) for c in ('base', label))})",
            )
        )
    if hold["benign"]:
        rows.append(
            (
                "benign instructions followed: base / teacher / student",
                " / ".join(pct(hold["benign"][c]) for c in ("base", "teacher", label)),
            )
        )
    return rows
