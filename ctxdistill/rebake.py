"""Re-baking: a run that starts from an earlier run's adapter with a newer constitution version.

* ``source_run`` — the earlier run, or TrainError when it cannot be continued from (not a finished
  training run with an adapter, another visitor's, another base model or another LoRA shape);
  checked before a job is queued and again when it starts.
* ``principle_changes`` — which principles a newer version added, removed or edited (by id; the
  preamble and the few-shot examples count as edits of their own).
* ``lineage`` — what a re-baked run records in its run info and model card: run N → run M,
  version a → b, and what changed.
* ``undone`` — the new version with one of its changes undone: the reference point from which a
  re-bake's baked gauge measures how much of that change the student carries (baked.py).
* ``stale_notice`` — the line the Distill and Compare tabs show when the constitution picked there
  differs from the version a run was trained on.

How the re-bake chooses what to train on is in mix.py (``disagreement``, ``rebake_mix``).
"""

from __future__ import annotations

from dataclasses import replace

from .constitution import Constitution, from_row
from .train_config import TrainConfig, TrainError

LORA_SHAPE = ("lora_r", "lora_alpha", "target_modules")


def source_run(store, cfg: TrainConfig) -> dict:
    """The job ``cfg.from_run`` names, after every check a re-bake needs; TrainError otherwise."""
    from .adapters import run_adapter
    from .store import NotFound

    n = cfg.from_run
    try:
        job = store.get_job(n, owner=cfg.owner)
    except NotFound:
        raise TrainError(f"run {n} not found among your runs: continue from a run of yours") from None
    if job["kind"] != "train":
        raise TrainError(f"job {n} is a {job['kind']} job, not a training run")
    if job["state"] != "done" or not run_adapter(store, n).is_dir():
        raise TrainError(f"run {n} has no adapter to continue from (it is {job['state']}): pick a finished run")
    old = job["config"]
    if (old.get("model") or "") != (cfg.model or ""):
        raise TrainError(
            f"run {n} was trained on another base model ({old.get('model') or 'the embedded default'}, "
            f"not {cfg.model or 'the embedded default'}): re-bake on the model it was made for"
        )
    shape = [
        f"{k.replace('_', ' ')} {old.get(k)} vs {getattr(cfg, k)}" for k in LORA_SHAPE if old.get(k) != getattr(cfg, k)
    ]
    if shape:
        raise TrainError(f"run {n} has another LoRA shape ({', '.join(shape)}): use its settings to continue from it")
    return job


def principle_changes(old: Constitution, new: Constitution) -> dict:
    """{"added", "removed", "edited"}: principle ids (plus "preamble" and "examples" when those changed)."""
    before, after = {p.id: p for p in old.principles}, {p.id: p for p in new.principles}
    edited = [i for i in after if i in before and after[i] != before[i]]
    edited += [part for part in ("preamble", "examples") if getattr(old, part) != getattr(new, part)]
    return {
        "added": [i for i in after if i not in before],
        "removed": [i for i in before if i not in after],
        "edited": edited,
    }


def undone(old: Constitution, new: Constitution, name: str) -> Constitution:
    """``new`` with its change to principle ``name`` (or "(preamble)") undone: an edited principle back to
    its ``old`` text, an added one taken out, a removed one put back where it was."""
    if name == "(preamble)":
        return replace(new, preamble=old.preamble)
    before = next((p for p in old.principles if p.id == name), None)
    if before is None:  # added
        return replace(new, principles=[p for p in new.principles if p.id != name])
    if any(p.id == name for p in new.principles):  # edited
        return replace(new, principles=[before if p.id == name else p for p in new.principles])
    kept = [p.id for p in old.principles[: old.principles.index(before)]]  # removed: after the ones before it
    at = max((i + 1 for i, p in enumerate(new.principles) if p.id in kept), default=0)
    return replace(new, principles=new.principles[:at] + [before] + new.principles[at:])


def changed_names(changes: dict) -> list[str]:
    """The principle ids a version changed, with "(preamble)" (the names baked.tracked knows)."""
    return [("(preamble)" if i == "preamble" else i) for ids in changes.values() for i in ids if i != "examples"]


def changes_text(changes: dict) -> str:
    """ "edited matey; added captain" or "no change"."""
    parts = [f"{kind} {', '.join(ids)}" for kind, ids in changes.items() if ids]
    return "; ".join(parts) or "no change"


def n_changed(changes: dict) -> int:
    return sum(len(ids) for ids in changes.values())


def lineage(store, job: dict, row: dict) -> dict:
    """The lineage of a run re-baked from ``job`` on constitution version ``row``."""
    old_row = store.get_constitution(job["config"]["constitution_id"])
    changes = principle_changes(from_row(old_row), from_row(row))
    return {
        "from_run": job["id"],
        "from_version": old_row["id"],
        "to_version": row["id"],
        "changes": changes,
        "text": f"re-baked from run {job['id']} (version {old_row['id']} → {row['id']}: {changes_text(changes)})",
    }


def latest_version(store, job: dict) -> int | None:
    """The newest saved version of the constitution ``job`` was trained on (its owner's)."""
    trained = (job.get("config") or {}).get("constitution_id")
    if not trained:
        return None
    versions = store.list_constitution_versions(name=store.get_constitution(trained)["name"], owner=job["owner"])
    return versions[0]["id"] if versions else None


def stale_notice(store, job: dict, constitution_id: int | None = None) -> str:
    """ "run 4 was trained on v3; v5 changed 2 principles (edited matey; added captain)" where
    ``constitution_id`` (default: the newest version of the run's constitution) is another version of
    the same constitution with other content than the run's; "" otherwise."""
    trained = (job.get("config") or {}).get("constitution_id")
    constitution_id = constitution_id or latest_version(store, job)
    if not constitution_id or not trained or trained == constitution_id:
        return ""
    old, new = store.get_constitution(trained), store.get_constitution(constitution_id)
    if old["name"] != new["name"] or old["hash"] == new["hash"]:
        return ""
    changes = principle_changes(from_row(old), from_row(new))
    count = n_changed(changes)
    return (
        f"run {job['id']} was trained on v{trained}; v{constitution_id} changed {count} "
        f"{'principle' if count == 1 else 'principles'} ({changes_text(changes)})"
    )
