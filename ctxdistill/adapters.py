"""The files of a run: adapters (save, check, load, merge), resumable checkpoints, the model card,
export (peft adapter or merged model) and the push to the Hub. The one owner of ``runs/<id>/``'s
adapter files; the training loop (train.py) and the evaluation (evaluate.py) call it.

A student's *strength* scales its adapter's update: 0 is the base model, 1 the adapter as trained,
up to 1.5 an exaggerated one. It is peft's LoRA scaling (``lora_alpha / r`` times the strength):
``scaled`` sets it on a loaded model, an exported adapter records it in its adapter_config.json
(``lora_alpha`` times the strength, so any peft loader gets that strength) and a merged export adds
the update at that scale.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import torch

from .safety import quote

RUN_FILE = "ctxdistill_run.json"  # written next to every saved adapter: what it was trained on
EVAL_FILE = "ctxdistill_eval.json"  # written into a run's adapter by evaluate.py: its latest figures


class AdapterError(RuntimeError):
    """An adapter that cannot be used with this model (corrupt files, another base model)."""


def run_adapter(store, run_id: int) -> Path:
    """Where training run ``run_id`` of the workspace keeps its adapter: ``runs/<id>/adapter``."""
    return store.runs_dir / str(int(run_id)) / "adapter"


def lineage(store, job: dict):
    """A run, then the run it started from, back to the distilled run at the root: a preference run
    may start from another preference run (a second round); only the root kept its teacher's answers,
    and its config names the base model, the LoRA shape and the constitution version."""
    while True:
        yield job
        if job["kind"] != "dpo" or not job["config"].get("from_run"):
            return
        job = store.get_job(job["config"]["from_run"])


def root_config(store, job: dict) -> dict:
    """The config of the distilled run at the root of ``job``'s lineage (``job``'s own for a distilled run)."""
    return list(lineage(store, job))[-1]["config"]


STRENGTH_RANGE = (0.0, 1.5)


def check_strength(strength) -> float:
    """The strength as a float, or AdapterError naming the range."""
    low, high = STRENGTH_RANGE
    try:
        value = float(strength)
    except (TypeError, ValueError):
        raise AdapterError(f"strength must be a number from {low:g} to {high:g}, not {quote(strength)}") from None
    if not low <= value <= high:
        raise AdapterError(
            f"strength must be from {low:g} (the base model) to {high:g}; 1 is the adapter as trained. Got {value:g}"
        )
    return value + 0.0  # -0.0 is 0: no "strength -0" on a card, no lora_alpha -0.0 in an export


def scaled(model, strength: float):
    """A context in which every LoRA adapter of ``model`` acts at ``strength`` times its trained scale."""
    from peft.helpers import rescale_adapter_scale

    return rescale_adapter_scale(model, check_strength(strength))


def model_fingerprint(model) -> dict:
    """What an adapter must agree with: the base model's architecture and vocabulary."""
    config = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
    keys = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    return {k: getattr(config, k, None) for k in keys}


def save_adapter(model, path: Path, info: dict) -> Path:
    """The adapter in peft format (adapter_model.safetensors + adapter_config.json) and what it was trained on."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    (tmp / RUN_FILE).write_text(json.dumps({**info, "base": model_fingerprint(model)}, indent=2))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return path


def check_adapter(path, model) -> dict:
    """Raise AdapterError unless ``path`` holds a readable adapter made for this base model; returns its run info."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    weights, config = path / "adapter_model.safetensors", path / "adapter_config.json"
    if not weights.is_file() or not config.is_file():
        raise AdapterError(f"{path} is not an adapter: adapter_model.safetensors or adapter_config.json is missing")
    try:
        info = json.loads((path / RUN_FILE).read_text()) if (path / RUN_FILE).is_file() else {}
        json.loads(config.read_text())
        with safe_open(str(weights), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (OSError, ValueError, SafetensorError) as exc:
        raise AdapterError(f"the adapter in {path} is corrupt or unreadable: {exc}") from exc
    want, have = info.get("base"), model_fingerprint(model)
    if want and want != have:
        diff = ", ".join(f"{k} {want.get(k)} vs {have.get(k)}" for k in have if want.get(k) != have.get(k))
        raise AdapterError(
            f"the adapter in {path} was trained on another base model ({diff}); load the model it was made for"
        )
    hidden = have.get("hidden_size")
    for name, shape in shapes.items():
        if "lora_A" in name and hidden and shape[1] not in _in_features(model):
            raise AdapterError(f"the adapter in {path} does not fit this model: {name} expects {shape[1]} inputs")
    return info


def _in_features(model) -> set[int]:
    return {m.in_features for m in model.modules() if hasattr(m, "in_features")}


def load_adapter(model, path, trainable: bool = False, name: str = "default"):
    """Base model + a saved adapter (the student), after ``check_adapter``. On a peft model
    already holding adapters, adds this one under ``name``."""
    from peft import PeftModel

    check_adapter(path, model)
    try:
        if isinstance(model, PeftModel):
            model.load_adapter(str(path), adapter_name=name, is_trainable=trainable)
            return model
        return PeftModel.from_pretrained(model, str(path), adapter_name=name, is_trainable=trainable)
    except Exception as exc:  # shape mismatches and unknown modules surface here
        raise AdapterError(f"the adapter in {path} does not fit this model: {exc}") from exc


def merged_student(base, adapter_dir, strength: float = 1.0):
    """The student for inference: a separate copy of ``base`` with the adapter merged in at ``strength``,
    so the shared base model (teacher and unprompted base) stays untouched."""
    import copy

    model = load_adapter(copy.deepcopy(base), adapter_dir)
    with scaled(model, strength):
        return model.merge_and_unload().eval()


def load_adapter_weights(model, path: Path) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    check_adapter(path, model)
    try:
        result = set_peft_model_state_dict(
            model, load_file(str(path / "adapter_model.safetensors"), device=str(model.device))
        )
    except Exception as exc:
        raise AdapterError(f"the adapter in {path} does not fit this model: {exc}") from exc
    if getattr(result, "unexpected_keys", None):
        raise AdapterError(f"the adapter in {path} does not fit this model: unexpected {result.unexpected_keys[:3]}")


def _rng_state() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    run_dir: Path, model, optimizer, scheduler, state: dict, keep: int = 2, progress=lambda done, total: None
) -> Path:
    """checkpoints/step-N/: the adapter (safetensors) and state.pt (optimiser, scheduler, step, RNG, best).

    ``progress(done, 2)`` is called before and after each of the two files."""
    progress(0, 2)
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    # Written under a hidden name and renamed when complete: a worker killed mid-write leaves no
    # half checkpoint for resume to pick up.
    name = f"step-{state['step']:06d}"
    partial = root / f".{name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    save_adapter(model, partial, {"step": state["step"]})
    progress(1, 2)
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": _rng_state(), **state},
        partial / "state.pt",
    )
    progress(2, 2)
    path = root / name
    shutil.rmtree(path, ignore_errors=True)
    partial.rename(path)
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def latest_checkpoint(run_dir: Path) -> Path | None:
    done = [p for p in sorted((Path(run_dir) / "checkpoints").glob("step-*")) if (p / "state.pt").is_file()]
    return done[-1] if done else None


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict:
    load_adapter_weights(model, path)
    try:
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state.pop("optimizer"))
        scheduler.load_state_dict(state.pop("scheduler"))
    except Exception as exc:
        raise AdapterError(f"the checkpoint {path} is corrupt or from another configuration: {exc}") from exc
    _set_rng_state(state.pop("rng"))
    return state


def write_model_card(path: Path, info: dict) -> Path:
    """README.md for an exported adapter or merged model: constitution version, data, loss, held-out figures."""

    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    config = info.get("config", {})
    lines = [
        "---",
        "library_name: peft",
        "tags: [context-distillation, lora, ctxdistill]",
        "---",
        "",
        f"# {info.get('constitution', 'constitution')} (context-distilled)",
        "",
        "A LoRA adapter trained with ctxdistill so that the model answers *without* its constitution in the "
        "prompt as it does *with* it (context distillation).",
        "",
        "| | |",
        "|---|---|",
        f"| base model | {info.get('base_model', '')} |",
        f"| precision | {info.get('precision', '')} compute"
        + (" on 4-bit NF4 weights" if info.get("quantize") == "4bit" else "")
        + (f": {info['precision_reason']}" if info.get("precision_reason") else "")
        + " |",
        f"| constitution | {info.get('constitution', '')}, version {info.get('constitution_id', '')}, "
        f"sha256 {str(info.get('constitution_hash', ''))[:12]} |",
        f"| data | {info.get('data', '')}: {info.get('n_train', '?')} answers from prompt set "
        f"{info.get('prompt_set', '')!r} |",
        *(
            [f"| held-out categories | {', '.join(info['heldout_categories'])} (never trained on) |"]
            if info.get("heldout_categories")
            else []
        ),
        *([f"| lineage | {info['lineage']['text']} |"] if info.get("lineage") else []),
        f"| loss | {info.get('loss', '')} |",
        f"| strength | {info.get('strength', 1.0):g} (the adapter's scale: 0 = the base model, 1 = as trained) |",
        f"| steps | {info.get('step', '')} (kept step {info.get('best_step', '')}) |",
        f"| held-out KL(teacher‖base) | {fmt(info.get('heldout_kl_before'))} nats/token |",
        f"| held-out KL(teacher‖student) | {fmt(info.get('heldout_kl_after'))} nats/token |",
        f"| KL gap closed | {fmt(info.get('gap_closed'))} (on {info.get('n_heldout', '?')} held-out answers) |",
        *(["", info["evaluation"]] if info.get("evaluation") else []),
        "",
        "## Training settings",
        "",
        "```json",
        json.dumps(config, indent=2),
        "```",
        "",
    ]
    out = Path(path) / "README.md"
    out.write_text("\n".join(lines))
    return out


def export(
    adapter_dir,
    out_dir,
    *,
    merged: bool = False,
    strength: float = 1.0,
    model_spec: str | None = None,
    models_dir=None,
    settings: dict | None = None,
) -> Path:
    """Copy the adapter (peft safetensors) with a model card to ``out_dir``; with ``merged``, write the
    base model with the adapter merged into it, in bfloat16, instead. Either acts at ``strength``. The
    adapter names its base model by its hub id (models.hub_name) where it has one, so that a peft
    loader on another machine finds it; the card lists the run's ``settings``."""
    from .models import hub_name, load_model

    strength = check_strength(strength)
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        raise AdapterError(f"{adapter_dir} is not an adapter: adapter_model.safetensors is missing")
    info = json.loads((adapter_dir / RUN_FILE).read_text()) if (adapter_dir / RUN_FILE).is_file() else {}
    info["strength"] = strength
    info["base_model"] = hub_name(model_spec) or info.get("base_model", "")
    info["config"] = {k: v for k, v in (settings or info.get("config") or {}).items() if k != "owner"}
    if (adapter_dir / EVAL_FILE).is_file():
        info["evaluation"] = json.loads((adapter_dir / EVAL_FILE).read_text()).get("markdown", "")
    if merged:
        base, tokenizer = load_model(model_spec, models_dir=models_dir)
        merged_student(base, adapter_dir, strength).to(torch.bfloat16).save_pretrained(out_dir, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)
    else:
        shutil.copytree(adapter_dir, out_dir, dirs_exist_ok=True)
        _scale_config(out_dir / "adapter_config.json", strength, hub_name(model_spec))
    (out_dir / RUN_FILE).write_text(json.dumps({k: v for k, v in info.items() if k != "evaluation"}, indent=2))
    card = write_model_card(out_dir, info)
    if merged:
        card.write_text(card.read_text().replace("library_name: peft", "library_name: transformers"))
    return out_dir


def export_run(store, run_id: int, out_dir, *, merged: bool = False, strength: float = 1.0) -> dict:
    """``export`` of training run ``run_id``'s adapter, with the model it was trained on; AdapterError
    when the run has no finished adapter. Returns what was written: run, path, merged, strength."""
    from .models import default_models_dir

    job, adapter = store.get_job(run_id), run_adapter(store, run_id)
    if job["kind"] not in ("train", "dpo") or not adapter.is_dir():
        raise AdapterError(f"job {run_id} has no finished adapter to export (a {job['kind']} job, {job['state']})")
    strength = check_strength(strength)
    out = export(
        adapter,
        out_dir,
        merged=merged,
        strength=strength,
        model_spec=root_config(store, job).get("model") or None,
        models_dir=default_models_dir(store.home),
        settings=job["config"],
    )
    return {"run": run_id, "path": str(out), "merged": merged, "strength": strength}


def _scale_config(path: Path, strength: float, base: str | None = None) -> None:
    """peft's scaling is lora_alpha / r: lora_alpha (and any per-module alpha) times the strength
    makes any peft loader apply the adapter at that strength. ``base``: the base model's portable
    name, instead of the path it was loaded from here."""
    config = json.loads(path.read_text())
    if base:
        config["base_model_name_or_path"] = base
    config["lora_alpha"] = config["lora_alpha"] * strength
    config["alpha_pattern"] = {k: v * strength for k, v in (config.get("alpha_pattern") or {}).items()}
    path.write_text(json.dumps(config, indent=2))


def push_to_hub(folder, repo_id: str, private: bool = True) -> str:
    """Upload an exported folder. The token comes from the environment (HF_TOKEN), never from a file we write."""
    from .safety import hub_token

    token = hub_token()
    if not token:
        raise AdapterError("no Hugging Face token configured: set HF_TOKEN in the environment to push")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id)
    return f"https://huggingface.co/{repo_id}"
