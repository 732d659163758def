"""An evaluation's plots (matplotlib figures, built outside pyplot): the scores with their 95%
intervals, the per-prompt KL distribution, training curves, principle influence and what got baked,
the robustness suite, and the blind votes. report.py puts them in the report; the Compare tab shows
them. No model and no store writes here.
"""

from __future__ import annotations

import base64
import io
import math

import numpy as np

from .stats import VOTE_OUTCOMES


def _figure(ncols: int = 1, figsize=(6, 3.4)):
    """A matplotlib figure outside pyplot's registry (nothing to close; no GUI backend needed)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    axes = fig.subplots(1, ncols)
    return fig, axes


def _err(ests: list[dict]) -> np.ndarray:
    """(2, n) error bars from the estimates' intervals; none where a value or interval is undefined."""

    def side(e, i):
        gap = (e["value"] - e["ci"][0]) if i == 0 else (e["ci"][1] - e["value"])
        return max(0.0, gap) if math.isfinite(gap) else 0.0

    return np.array([[side(e, 0) for e in ests], [side(e, 1) for e in ests]])


def _bars(ax, names: list[str], ests: list[dict], title: str, color=None):
    values = [e["value"] for e in ests]
    ax.bar(names, values, yerr=_err(ests), capsize=4, color=color)
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)


def fig_scores(results: dict, labels: list[str] | None = None):
    """Metric bars with 95% intervals: KL to the teacher, gap closed, retention, check pass rates."""
    s = results["scores"]
    labels = labels or [r["label"] for r in results["runs"]]
    checks = s["checks"]
    fig, axes = _figure(3 + bool(checks), figsize=(4 * (3 + bool(checks)), 3.4))
    _bars(axes[0], ["base", *labels], [s["kl"][c] for c in ["base", *labels]], "KL(teacher‖x), nats/token")
    _bars(axes[1], labels, [s["gap_closed"][c] for c in labels], "KL gap closed", "tab:green")
    _bars(
        axes[2],
        ["teacher", *labels],
        [s["retention"][c]["delta"] for c in ["teacher", *labels]],
        "Δ NLL of base answers (retention)",
        "tab:orange",
    )
    if checks:
        _grouped(
            axes[3],
            list(checks),
            {cond: [row[cond] for row in checks.values()] for cond in ["base", "teacher", *labels]},
            "check pass rate",
        )
    fig.tight_layout()
    return fig


_NONE = {"value": math.nan, "ci": [math.nan, math.nan], "n": 0}


def _grouped(ax, groups: list[str], series: dict[str, list[dict | None]], title: str, rate: bool = True):
    """Bars of estimates per group, one bar per series, with their 95% intervals; an undefined one has no bar."""
    width = 0.8 / max(1, len(series))
    for k, (name, ests) in enumerate(series.items()):
        ests = [e or _NONE for e in ests]
        ax.bar(
            np.arange(len(groups)) + k * width,
            [e["value"] for e in ests],
            width,
            label=name,
            yerr=_err(ests),
            capsize=2,
        )
    ax.set_xticks(
        np.arange(len(groups)) + 0.4 - width / 2,
        groups,
        fontsize=8,
        rotation=20 if len(groups) > 4 else 0,
        ha="right" if len(groups) > 4 else "center",
    )
    if rate:
        ax.set_ylim(0, 1.05)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)


def fig_capability(results: dict, labels: list[str] | None = None):
    """Capability accuracy of base, teacher and students, overall and per kind of question."""
    cap = results["robustness"]["capability"]
    conds = ["base", "teacher", *(labels or [r["label"] for r in results["runs"]])]
    groups = ["all", *cap["by_category"]]
    fig, ax = _figure(figsize=(8, 3.4))
    _grouped(
        ax,
        groups,
        {c: [cap["accuracy"][c], *(cap["by_category"][g][c] for g in groups[1:])] for c in conds},
        f"capability: accuracy on {cap['n_items']} short questions",
    )
    fig.tight_layout()
    return fig


def fig_families(results: dict, labels: list[str] | None = None):
    """Per prompt category: each student's KL gap closed, and the check pass rates."""
    fam = results["robustness"]["by_family"]
    labels = labels or [r["label"] for r in results["runs"]]
    groups = list(fam)
    fig, axes = _figure(2, figsize=(11, 3.4))
    _grouped(
        axes[0],
        groups,
        {lab: [fam[g]["gap_closed"][lab] for g in groups] for lab in labels},
        "KL gap closed per family",
        rate=False,
    )
    _grouped(
        axes[1],
        groups,
        {c: [fam[g]["checks"][c] for g in groups] for c in ["base", "teacher", *labels]},
        "checks passed per family",
    )
    fig.tight_layout()
    return fig


def fig_attacks(results: dict, labels: list[str] | None = None):
    """Per kind of injection: the checks passed under attack (and without: "none"), and the KL from the
    un-attacked teacher, for the teacher and the students."""
    inj = results["robustness"]["injection"]
    conds = ["teacher", *(labels or [r["label"] for r in results["runs"]])]
    kinds = inj["kinds"]
    fig, axes = _figure(2, figsize=(12, 3.6))
    _grouped(
        axes[0],
        ["none", *kinds],
        {c: [inj["overall"][c]["clean"], *(inj["by_kind"][k][c]["attacked"] for k in kinds)] for c in conds},
        "checks passed under attack",
    )
    _grouped(
        axes[1],
        kinds,
        {c: [inj["by_kind"][k][c]["kl"] for k in kinds] for c in conds},
        "KL(un-attacked teacher ‖ x under attack)",
        rate=False,
    )
    fig.tight_layout()
    return fig


def per_prompt_kl(results: dict, cond: str) -> list[float]:
    return [sum(p["kl"][cond]) / len(p["kl"][cond]) if p["kl"].get(cond) else math.nan for p in results["prompts"]]


def fig_kl_distribution(results: dict, labels: list[str] | None = None):
    """Histogram of the per-prompt mean KL(teacher‖x) for the base model and the students."""
    labels = labels or [r["label"] for r in results["runs"]]
    fig, ax = _figure()
    values = {c: [v for v in per_prompt_kl(results, c) if math.isfinite(v)] for c in ["base", *labels]}
    top = max((max(v) for v in values.values() if v), default=1.0)
    bins = np.linspace(0, top or 1.0, 21)
    for cond, v in values.items():
        ax.hist(v, bins=bins, alpha=0.55, label=cond)
    ax.set_xlabel("mean KL(teacher‖x) per prompt, nats/token")
    ax.set_ylabel("prompts")
    ax.set_title(f"Held-out KL distribution ({results['n_prompts']} prompts)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def fig_training(results: dict, labels: list[str] | None = None):
    """Training loss and held-out KL of the compared runs, by step."""
    fig, axes = _figure(2, figsize=(9, 3.2))
    for r in results["runs"]:
        if labels and r["label"] not in labels:
            continue
        for ax, name in zip(axes, ("loss", "heldout_kl")):
            points = r["training"].get(name) or []
            if points:
                ax.plot(
                    [p[0] for p in points],
                    [p[1] for p in points],
                    marker="." if name == "heldout_kl" else None,
                    label=r["label"],
                )
    for ax, title in zip(axes, ("training loss", "held-out KL(teacher‖student)")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def metric_frame(rows: list[dict], names: set[str], labels: dict[str, str] | None = None):
    """A run's metric rows (step, name, value) named in ``names`` as a (step, value, metric) frame, each
    metric under its label; rows without a value are left out."""
    import pandas as pd

    labels = labels or {}
    picked = [
        {"step": r["step"], "value": r["value"], "metric": labels.get(r["name"], r["name"])}
        for r in rows
        if r["name"] in names and r["value"] is not None
    ]
    return pd.DataFrame(picked, columns=["step", "value", "metric"])


def fig_curves(*panels: tuple):
    """A run's live curves: one panel per non-empty (frame, title, ylim) in a row, one line per metric
    of the (step, value, metric) frame, by step; None when every frame is empty (the plot stays empty
    rather than drawing empty axes)."""
    from matplotlib.ticker import MaxNLocator

    panels = [p for p in panels if len(p[0])]
    if not panels:
        return None
    fig, axes = _figure(len(panels), figsize=(5 * len(panels), 3))
    for ax, (frame, title, ylim) in zip(np.atleast_1d(axes), panels):
        for name, points in frame.groupby("metric", sort=False):
            points = points.sort_values("step")
            ax.plot(points["step"], points["value"], marker="." if len(points) < 30 else None, label=name)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ylim:
            ax.set_ylim(*ylim)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _ranked(rows: list[dict], xlabel: str, title: str, color: str):
    """Horizontal bars of estimates, the first row on top, with their 95% intervals; an undefined value has no bar."""
    fig, ax = _figure(figsize=(6, 0.5 + 0.45 * max(1, len(rows))))
    rows = list(reversed(rows))
    ax.barh(
        [r["principle"] for r in rows],
        [r["value"] if math.isfinite(r["value"]) else 0.0 for r in rows],
        xerr=_err(rows) if rows else None,
        capsize=3,
        color=color,
    )
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def fig_influence(rows: list[dict]):
    """Principles sorted by how much removing them changes the teacher (KL, 95% interval)."""
    return _ranked(rows, "KL(full constitution ‖ without it), nats/token", "Principle influence", "tab:purple")


def fig_baked(rows: list[dict], label: str):
    """Principles sorted by the share of their effect a student carries (baked.py), 95% intervals."""
    fig = _ranked(
        rows,
        "share of the principle's effect carried (0 = none, 1 = all)",
        f"Which principles got baked into {label}",
        "tab:green",
    )
    fig.axes[0].set_xlim(0, 1.05)
    return fig


def fig_votes(tally: dict):
    fig, ax = _figure(figsize=(5, 3))
    _bars(
        ax,
        list(VOTE_OUTCOMES),
        [tally["rates"][o] for o in VOTE_OUTCOMES],
        f"Blind A/B ({tally['n']} votes)",
        "tab:gray",
    )
    ax.set_ylim(0, 1.05)
    fig.tight_layout()
    return fig


def png_base64(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return base64.b64encode(buf.getvalue()).decode()
