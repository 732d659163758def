"""The ``ctxdistill`` command: the library's operations, headless.

    ctxdistill serve                      # the web app on http://127.0.0.1:7860
    ctxdistill preview --constitution assets/constitutions/pirate.yaml --prompt "Hi" --json

Each sub-command is a function ``cmd_<name>(args) -> int`` registered with ``@command(name, help, flags)``;
errors that a user can fix are raised as ``UserError``. Every failure, a bad flag included, is printed as
one line ``error: ...`` (hub tokens redacted) with exit status 2, never as a traceback.

It runs over 450 lines because it is one short function per sub-command with its flags beside it;
splitting it would part a command from its flags.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from dataclasses import fields

_COMMANDS: list[tuple[str, str, object, object]] = []


class UserError(Exception):
    """Bad input: printed as one clear line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse's errors as one line, like every other failure of the command."""

    def error(self, message):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def command(name: str, help: str, configure=None):
    """Register ``fn(args) -> int`` as a sub-command; ``configure(parser)`` adds its flags."""

    def wrap(fn):
        _COMMANDS.append((name, help, configure or (lambda parser: None), fn))
        return fn

    return wrap


# One name for the prompt set on every command; the older spellings still work.
PROMPT_SET_FLAGS = ("--prompt-set", "--set-name", "--set", "--prompts")


def add_dataclass_flags(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """One ``--flag`` per dataclass field, its help text taken from the field's metadata."""
    for f in fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.name in ("set_name", "prompt_set"):
            parser.add_argument(
                *PROMPT_SET_FLAGS, dest=f.name, default=None, help=f"{f.metadata.get('help', '')} (default {f.default})"
            )
            continue
        kind = type(f.default) if f.default is not None and not callable(f.default) else str
        if kind is bool:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=f.metadata.get("help", "")
            )
        else:
            parser.add_argument(
                flag, type=kind, default=None, help=f"{f.metadata.get('help', '')} (default {f.default})"
            )


def dataclass_from_args(cls, args, **overrides):
    """Build ``cls`` from the flags that were given, leaving the others at their defaults."""
    values = {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}
    values.update(overrides)
    return cls(**values)


def emit(args, payload: dict, human: str) -> None:
    print(json.dumps(payload, ensure_ascii=False) if getattr(args, "json", False) else human)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace", help="workspace directory (default $CTXDISTILL_HOME or ./workspace)")
    parser.add_argument("--model", help="hub id, local directory or .gguf file (default: the embedded SmolLM2-135M)")
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run the model repository's own Python code (off by default; refused in demo mode)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def load_constitution_file(path: str):
    from ctxdistill.constitution import ConstitutionError, ensure_valid, load

    try:
        return ensure_valid(load(path))
    except ConstitutionError as exc:
        raise UserError(f"{path}: {exc}")


def load_model_or_fail(args, **kwargs):
    from ctxdistill.models import ModelError, load_model_cached

    try:
        return load_model_cached(args.model, models_dir=_models_dir(args), **kwargs)
    except ModelError as exc:
        raise UserError(str(exc))


def _models_dir(args):
    from ctxdistill.models import default_models_dir

    return default_models_dir(args.workspace)


def open_store(args):
    from ctxdistill import jobs
    from ctxdistill.store import Store

    store = Store(args.workspace)
    jobs.refresh(store)  # a worker killed while no page was open is settled by the next command
    return store


def _serve_flags(p):
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link")


@command("serve", "start the web app", _serve_flags)
def cmd_serve(args) -> int:
    import os

    if not 0 < args.port < 65536:
        raise UserError(f"--port must be between 1 and 65535, not {args.port}")
    if args.workspace:
        os.environ["CTXDISTILL_HOME"] = args.workspace
    if args.model:
        os.environ["CTXDISTILL_MODEL"] = args.model
    from ctxdistill.ui.app import launch

    launch(host=args.host, port=args.port, share=args.share)
    return 0


@command("prepare", "make the default model ready offline (convert the embedded GGUF once)")
def cmd_prepare(args) -> int:
    from ctxdistill.models import ModelError, local_checkpoint

    try:
        path = local_checkpoint(args.model, _models_dir(args))
    except ModelError as exc:
        raise UserError(str(exc))
    emit(args, {"checkpoint": path}, f"model ready: {path}")
    return 0


def _info_flags(p):
    p.add_argument("--no-measure", action="store_true", help="only the facts: skip the few seconds of calibration")
    p.add_argument("--quantize", default="auto", help="calibrate with this quantization (auto, 4bit, none)")
    p.add_argument("--precision", default="auto", help="calibrate with this compute dtype (auto, bf16, fp16, fp32)")


@command(
    "info",
    "this machine: device, CPU capability, versions, the precision policy's pick and why, "
    "and the default training run's predicted time",
    _info_flags,
)
def cmd_info(args) -> int:
    from ctxdistill import estimate
    from ctxdistill.models import ModelError
    from ctxdistill.precision import facts, policy

    try:
        chosen = policy(None, args.quantize, args.precision)
    except ValueError as exc:
        raise UserError(str(exc))
    out = {**facts(), "precision": chosen.to_dict()}
    if not args.no_measure:
        try:
            cal = estimate.calibrate(
                args.model, quantize=args.quantize, precision=args.precision, models_dir=_models_dir(args)
            )
        except ModelError as exc:
            raise UserError(str(exc))
        out["calibration"] = cal.to_dict()
        out["default_run"] = default_run_estimate(open_store(args), cal)
    emit(args, out, info_text(out))
    return 0


def default_run_estimate(store, cal) -> dict:
    """Predicted seconds per phase of ``ctxdistill train`` with its defaults on the shipped prompt set."""
    from ctxdistill import estimate
    from ctxdistill.train import TrainConfig

    cfg = TrainConfig()
    n_train, n_heldout = estimate.run_size(cfg, store)
    return {
        "steps": cfg.steps,
        "n_train": n_train,
        "n_heldout": n_heldout,
        "seconds": estimate.predict_train(cal, cfg, n_train, n_heldout),
    }


def info_text(out: dict) -> str:
    from ctxdistill.estimate import duration

    v = out["versions"]
    lines = [
        f"device        {out['device']}" + (f" · {out['gpu']} ({out['gpu_memory_mb']} MB)" if out["gpu"] else ""),
        f"CPU           {out['cpu_model']} · {out['cores']} cores, {out['torch_threads']} torch threads",
        f"CPU ISA       ATen {out['cpu_capability']}"
        + (f" · oneDNN max {out['onednn_max_isa']}" if out["onednn_max_isa"] else "")
        + f" · bf16 flags: {', '.join(out['cpu_bf16_flags']) or 'none'} · native bf16: {'yes' if out['native_bf16'] else 'no'}",
        "versions      " + ", ".join(f"{k} {v[k] or '-'}" for k in v),
        f"precision     {out['precision']['label']}: {out['precision']['reason']}",
    ]
    if "calibration" in out:
        c, run = out["calibration"], out["default_run"]
        sec = run["seconds"]
        lines += [
            f"measured      training step (8 answers x 40 tokens) {c['step_s']:.2f} s · scoring pass {c['score_s']:.2f} s"
            f" · sampling step (64 rows) {c['decode_s'] * 1000:.0f} ms · model load {c['load_s']:.1f} s",
            f"default run   ~{duration(sec['total'])} ({run['steps']} steps on {run['n_train']} train prompts): "
            + ", ".join(f"{k} {duration(v)}" for k, v in sec.items() if k != "total"),
        ]
    return "\n".join(lines)


def _preview_flags(p):
    from ctxdistill.sampling import SamplingConfig

    p.add_argument("--constitution", required=True, help="YAML or JSON constitution file")
    p.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for several)")
    p.add_argument("--samples", type=int, default=1, help="samples per prompt")
    add_dataclass_flags(p, SamplingConfig, skip=("n",))


@command("preview", "answers with and without the constitution, and the mean per-token KL between them", _preview_flags)
def cmd_preview(args) -> int:
    from ctxdistill.constitution import render
    from ctxdistill.sampling import SamplingConfig, preview

    constitution = load_constitution_file(args.constitution)
    try:
        cfg = dataclass_from_args(SamplingConfig, args, n=args.samples).validate()
    except ValueError as exc:
        raise UserError(str(exc))
    if any(not p.strip() for p in args.prompt):
        raise UserError("the prompt is empty")
    model, tokenizer = load_model_or_fail(args)
    check_context(render(constitution), tokenizer, model, cfg.max_new_tokens)
    result = preview(model, tokenizer, render(constitution), args.prompt, cfg)
    human = (
        "\n\n".join(
            f"# {q}\n-- with the constitution --\n" + "\n".join(a) + "\n-- without --\n" + "\n".join(b)
            for q, a, b in zip(result.prompts, result.prompted, result.unprompted)
        )
        + f"\n\nmean KL: {result.mean_kl:.3f} nats/token"
    )
    emit(args, result.to_json(), human)
    return 0


def check_context(system: str, tokenizer, model, max_new_tokens: int) -> int:
    """Raise UserError if the rendered constitution leaves no room for a prompt and an answer."""
    from ctxdistill.models import ContextError, check_fits

    try:
        return check_fits(model, tokenizer, system, max_new_tokens)
    except ContextError as exc:
        raise UserError(str(exc))


def constitution_version(store, spec: str, owner: str = "") -> int:
    """A constitution version id from ``spec``: a version number, or a file saved as a new version."""
    from ctxdistill.constitution import content_hash, to_dict
    from ctxdistill.store import NotFound

    if spec.isdigit():
        try:
            return store.get_constitution(int(spec))["id"]
        except NotFound:
            raise UserError(f"no constitution version {spec} in this workspace")
    c = load_constitution_file(spec)
    return store.save_constitution(c.name, to_dict(c), content_hash(c), message=f"from {spec}", owner=owner)


def _import_flags(p):
    p.add_argument("source", help="CSV, JSONL, JSON, TXT or Parquet file, a datasets directory, or a hub id")
    p.add_argument(*PROMPT_SET_FLAGS, dest="set_name", required=True, help="prompt set to add to (created if new)")
    p.add_argument("--column", help="column holding the prompt (default: text, prompt, instruction, question...)")
    p.add_argument("--split-column", help="column holding train/heldout (default: a 'split' column if any)")
    p.add_argument("--category-column", help="column holding a category")
    p.add_argument(
        "--heldout-fraction", type=float, default=0.1, help="share held out when no split column (default 0.1)"
    )
    p.add_argument(
        "--format", choices=("csv", "jsonl", "json", "txt", "parquet", "datasets"), help="override the file type"
    )
    p.add_argument(
        "--recipe",
        action="store_true",
        help="a dataset with the HF constitutional-AI recipe columns (init_prompt, init_response, "
        "critic_*, revision_*): import its samples into the review queue",
    )


@command("import", "import a prompt set, or a recipe dataset's samples", _import_flags)
def cmd_import(args) -> int:
    from ctxdistill import curate, prompts

    store = open_store(args)
    try:
        if args.recipe:
            result = curate.import_recipe_dataset(store, args.source, args.set_name, fmt=args.format)
            human = (
                f"imported {result['samples']} samples ({result['rounds']} revision rounds) into set "
                f"{result['set']!r} under constitution version {result['constitution_id']}"
            )
        else:
            result = prompts.import_prompts(
                store,
                args.set_name,
                args.source,
                column=args.column,
                split_column=args.split_column,
                category_column=args.category_column,
                heldout_fraction=args.heldout_fraction,
                fmt=args.format,
            )
            human = (
                f"{result['added']} prompts added to {result['set']!r} ({result['duplicates']} duplicates, "
                f"{result['empty']} empty skipped); the set has {result['n_train']} train, "
                f"{result['n_heldout']} held-out"
            )
    except (prompts.ImportFileError, ValueError) as exc:
        raise UserError(str(exc))
    emit(args, result, human)
    return 0


def _job_flags(cls):
    def configure(p):
        from ctxdistill.sampling import SamplingConfig

        p.add_argument("--constitution", required=True, help="constitution file, or a version id in the workspace")
        add_dataclass_flags(p, cls, skip=("constitution_id", "model", "owner", "sampling"))
        add_dataclass_flags(p, SamplingConfig, skip=("n",) if cls.__name__ == "ReviseConfig" else ())
        p.add_argument("--detach", action="store_true", help="start the job in the background and print its id")

    return configure


def run_job(args, kind: str, config: dict, summary, resume: int | None = None) -> int:
    """Submit a job (or resume job ``resume``); unless --detach, follow its progress on stderr (Ctrl-C
    cancels it) and print its result."""
    import time

    from ctxdistill import jobs

    store = open_store(args)
    try:
        job_id = jobs.resume(store, resume) if resume is not None else jobs.submit(store, kind, config)
    except jobs.StoreError as exc:
        raise UserError(str(exc))
    if args.detach:
        emit(args, {"job_id": job_id}, f"job {job_id} started; follow it in the web app or with the store")
        return 0
    last = None
    try:
        with _interrupted_by(signal.SIGTERM, signal.SIGHUP):
            while (job := jobs.get(store, job_id))["state"] not in ("done", "failed", "cancelled"):
                if job["message"] != last and not args.json:
                    print(f"job {job_id}: {job['message'] or job['state']}", file=sys.stderr)
                    last = job["message"]
                time.sleep(0.5)
    except KeyboardInterrupt:
        stop_job(store, job_id)
        raise
    if job["state"] != "done":
        raise UserError(
            f"job {job_id} {job['state']}: {job['error'] or job['message']} "
            f"(log: {store.runs_dir / str(job_id) / 'log.txt'}; resume it to finish the rest)"
        )
    emit(args, {"job_id": job_id, **job["result"]}, summary(job["result"]))
    return 0


STOP_GRACE_S = 60.0  # a job checks for cancel between steps; a step of a slow CPU can take this long


@contextlib.contextmanager
def _interrupted_by(*signals):
    """SIGTERM and SIGHUP to a foreground command (``timeout``, a closed terminal) do what Ctrl-C
    does: the job is cancelled, what it finished is kept, and it can be resumed. Without this the
    command would die and leave its worker running with nobody waiting for it (``--detach`` is the
    way to leave a job running)."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    old = {sig: signal.signal(sig, interrupt) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def stop_job(store, job_id: int) -> None:
    """Cancel a followed job and wait until its worker stopped (killed after the grace period). A
    second interrupt while waiting kills it at once; either way no worker is left behind."""
    import time

    from ctxdistill import jobs

    print(f"stopping job {job_id} (it stops at its next step; interrupt again to kill it now)…", file=sys.stderr)
    jobs.cancel(store, job_id, grace_s=STOP_GRACE_S)
    try:
        with _interrupted_by(signal.SIGTERM, signal.SIGHUP):
            job = jobs.wait(store, job_id, timeout=STOP_GRACE_S + 10)
    except (KeyboardInterrupt, TimeoutError):
        jobs.cancel(store, job_id, grace_s=0)  # the grace is over: refresh kills the worker
        time.sleep(0.01)
        jobs.refresh(store)
        job = store.get_job(job_id)
    # the worker marks its job before it exits: wait for the process too, so none is left behind
    deadline = time.monotonic() + 10
    while job["pid"] and jobs.worker_alive(job["pid"], job_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    if job["pid"] and jobs.worker_alive(job["pid"], job_id):
        jobs.kill_worker(job["pid"], job_id)
    print(f"job {job_id} {job['state']}: {job['message']}; resume it to finish the rest", file=sys.stderr)


def _config(cls, args, **overrides):
    from ctxdistill.sampling import SamplingConfig

    sampling = {
        f.name: getattr(args, f.name) for f in fields(SamplingConfig) if getattr(args, f.name, None) is not None
    }
    try:
        return dataclass_from_args(cls, args, model=args.model or "", sampling=sampling, **overrides).validate()
    except ValueError as exc:
        raise UserError(str(exc))


def _generate_flags(p):
    from ctxdistill.generate import GenerateConfig

    _job_flags(GenerateConfig)(p)


@command("generate", "sample the teacher's answers (and unprompted ones) for a prompt set", _generate_flags)
def cmd_generate(args) -> int:
    from ctxdistill.generate import GenerateConfig
    from ctxdistill.prompts import ensure_default_prompts, select_prompts

    store = open_store(args)
    ensure_default_prompts(store)
    cfg = _config(GenerateConfig, args, constitution_id=constitution_version(store, args.constitution))
    if not select_prompts(store, cfg.set_name, search=cfg.search, category=cfg.category, limit=cfg.limit):
        raise UserError(
            f"prompt set {cfg.set_name!r} has no train prompts matching the filters "
            f"(sets: {', '.join(s['name'] for s in store.prompt_sets()) or 'none'})"
        )
    return run_job(
        args,
        "generate",
        cfg.to_dict(),
        lambda r: (
            f"{r['prompts']} prompts ({r['answered_now']} answered now, {r['samples_written']} samples, "
            f"{r['tokens_per_s']} tokens/s); flags: {r['flags']}"
        ),
    )


def _revise_flags(p):
    from ctxdistill.revise import ReviseConfig

    _job_flags(ReviseConfig)(p)


@command("revise", "critique and revise samples with the constitution's principles (SL-CAI)", _revise_flags)
def cmd_revise(args) -> int:
    from ctxdistill.revise import ReviseConfig

    store = open_store(args)
    cfg = _config(ReviseConfig, args, constitution_id=constitution_version(store, args.constitution))
    if not store.count_samples(
        constitution_id=cfg.constitution_id, set_name=cfg.set_name or None, status=cfg.status or None
    )["total"]:
        raise UserError(
            f"constitution version {cfg.constitution_id} has no {cfg.status or ''} samples"
            f"{' in set ' + repr(cfg.set_name) if cfg.set_name else ''} to revise: run generate first"
        )
    return run_job(
        args,
        "revise",
        cfg.to_dict(),
        lambda r: f"{r['samples']} samples, {r['rounds_done_now']} rounds done now; flags: {r['flags']}",
    )


def _export_flags(p):
    from ctxdistill.curate import EXPORT_FORMATS

    p.add_argument("--constitution", help="constitution version id (or file) whose samples to export")
    p.add_argument("--format", choices=EXPORT_FORMATS, default="messages", help="output form (default messages)")
    p.add_argument("--out", required=True, help="output file (a directory for the datasets format or a run)")
    p.add_argument(*PROMPT_SET_FLAGS, dest="set_name", help="only samples of this prompt set")
    p.add_argument("--hub-id", help="also push_to_hub under this id (datasets format; needs HF_TOKEN)")
    p.add_argument(
        "--run", type=int, help="export this training run's adapter (with its model card) instead of samples"
    )
    p.add_argument(
        "--merged", action="store_true", help="with --run: the base model with the adapter merged in (bfloat16)"
    )
    p.add_argument(
        "--strength",
        type=float,
        help="with --run: the adapter's scale, 0 (the base model) to 1.5; 1 = as trained (default)",
    )


def _export_run(args, store) -> int:
    from ctxdistill import adapters
    from ctxdistill.store import StoreError

    try:
        job = store.get_job(args.run)
    except StoreError as exc:
        raise UserError(str(exc))
    adapter = store.runs_dir / str(args.run) / "adapter"
    if job["kind"] != "train" or not adapter.is_dir():
        raise UserError(f"job {args.run} has no finished adapter to export (a {job['kind']} job, {job['state']})")
    try:
        strength = 1.0 if args.strength is None else args.strength
        out = adapters.export(
            adapter,
            args.out,
            merged=args.merged,
            strength=strength,
            model_spec=job["config"].get("model") or None,
            models_dir=_models_dir(args),
        )
    except adapters.AdapterError as exc:
        raise UserError(str(exc))
    emit(
        args,
        {"run": args.run, "path": str(out), "merged": args.merged, "strength": strength},
        f"run {args.run} exported to {out} ({'merged model' if args.merged else 'peft adapter'}, strength {strength:g})",
    )
    return 0


@command(
    "export",
    "export the accepted samples as JSONL, CSV or a datasets dataset, or a run's adapter (--run)",
    _export_flags,
)
def cmd_export(args) -> int:
    from ctxdistill.curate import export

    store = open_store(args)
    if args.run is not None:
        return _export_run(args, store)
    if args.merged or args.strength is not None:
        raise UserError("--merged and --strength apply to a run's adapter: add --run RUN")
    if not args.constitution:
        raise UserError("--constitution is required (or --run RUN to export a run's adapter)")
    try:
        result = export(
            store,
            constitution_version(store, args.constitution),
            args.format,
            args.out,
            set_name=args.set_name,
            hub_id=args.hub_id,
        )
    except ValueError as exc:
        raise UserError(str(exc))
    counts = result["counts"]
    emit(
        args,
        result,
        f"{counts['exported']} accepted samples written to {result['path']} "
        f"({counts['pending']} pending, {counts['rejected']} rejected not exported); "
        f"manifest {result['manifest']}",
    )
    return 0


def _train_flags(p):
    from ctxdistill.train import TrainConfig

    p.add_argument("--constitution", help="constitution file, or a version id in the workspace (not with --resume)")
    add_dataclass_flags(p, TrainConfig, skip=("constitution_id", "model", "owner"))
    p.add_argument(
        "--resume", type=int, metavar="RUN", help="continue a stopped or failed run from its last checkpoint"
    )
    p.add_argument("--detach", action="store_true", help="start the job in the background and print its id")


def _train_summary(r: dict) -> str:
    return (
        f"run {r['run']}: held-out KL {r['heldout_kl_before']:.4f} -> {r['heldout_kl_after']:.4f} nats/token "
        f"(gap closed {r['gap_closed']:.0%}, kept step {r['best_step']}); adapter {r['adapter']}"
        + (f"; {r['lineage']['text']}" if r.get("lineage") else "")
    )


@command(
    "train",
    "distil the constitution into a LoRA adapter (prints the run id and the held-out KL before and after)",
    _train_flags,
)
def cmd_train(args) -> int:
    from ctxdistill import train
    from ctxdistill.store import StoreError

    if args.resume is None and not args.constitution:
        raise UserError("--constitution is required (or --resume RUN to continue a run)")
    store = open_store(args)
    if args.resume is not None:
        try:
            config = store.get_job(args.resume)["config"]
        except StoreError as exc:
            raise UserError(str(exc))
    else:
        try:
            cfg = dataclass_from_args(
                train.TrainConfig,
                args,
                model=args.model or "",
                constitution_id=constitution_version(store, args.constitution),
            )
            train.check_start(store, cfg)
            config = cfg.to_dict()
        except train.TrainError as exc:
            raise UserError(str(exc))
    accelerator = train._setup_accelerator()
    if accelerator.num_processes > 1:
        return _train_distributed(args, store, accelerator, config)
    return run_job(args, "train", config, _train_summary, resume=args.resume)


def _train_distributed(args, store, accelerator, config: dict) -> int:
    """Under ``accelerate launch``: the main process records the run as a job, every process trains its share."""
    from accelerate.utils import broadcast_object_list

    from ctxdistill import jobs, train

    job_id = [args.resume or (store.create_job("train", config, heavy=True) if accelerator.is_main_process else None)]
    job_id = broadcast_object_list(job_id)[0]
    if accelerator.is_main_process:
        if args.resume:
            store.update_job(
                job_id, if_state=("failed", "cancelled"), state="queued", error=None, cancel_requested=False
            )
        jobs.run_inline(store, job_id)
        job = store.get_job(job_id)
    else:
        train.run(train.TrainConfig.from_dict(config), store, store.runs_dir / str(job_id), accelerator=accelerator)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return 0
    if job["state"] != "done":
        raise UserError(f"run {job_id} {job['state']}: {job['error'] or job['message']}")
    emit(
        args,
        {"job_id": job_id, "processes": accelerator.num_processes, **job["result"]},
        _train_summary(job["result"]) + f" ({accelerator.num_processes} processes)",
    )
    return 0


def _eval_flags(p):
    from ctxdistill.evaluate import EvalConfig

    p.add_argument("--constitution", required=True, help="constitution file, or a version id in the workspace")
    p.add_argument(
        "--run", type=int, action="append", required=True, help="training run (job id) to score; repeat for several"
    )
    p.add_argument(
        *PROMPT_SET_FLAGS,
        dest="prompts",
        default="default",
        help="prompt set whose held-out prompts are scored (default: default)",
    )
    p.add_argument(
        "--category",
        action="append",
        dest="categories",
        help="score only the held-out prompts of this category; repeat for several",
    )
    add_dataclass_flags(p, EvalConfig, skip=("constitution_id", "runs", "prompt_set", "categories", "model", "owner"))
    p.add_argument("--report", help="also write the report: a .md, .html or .json file")
    p.add_argument("--detach", action="store_true", help="start the job in the background and print its id")


def _eval_summary(r: dict) -> str:
    checks = "; ".join(
        f"{pid}: " + ", ".join(f"{c} {v:.0%}" for c, v in row.items()) for pid, row in r["checks"].items()
    )
    ret = r["retention"]
    capability = (
        (" vs ".join(f"{c} {v:.0%}" for c, v in reversed(r["capability"].items())) + "; ")
        if r.get("capability")
        else ""
    )
    return (
        f"eval {r['eval_id']} ({r['run']}, {r['n_prompts']} held-out prompts, {r['seconds']:.0f} s): "
        f"{'capability: ' if capability else ''}{capability}KL(teacher‖base) {r['kl_base']:.4f} -> KL(teacher‖student) {r['kl_student']:.4f} nats/token, "
        f"gap closed {r['gap_closed']:.0%} (95% CI {r['intervals']['gap_closed'][0]:.0%} to "
        f"{r['intervals']['gap_closed'][1]:.0%}); retention: NLL of base answers {ret['nll_base']:.3f} -> "
        f"{ret['nll_student']:.3f}; checks: {checks or 'none'}"
    )


@command(
    "eval",
    "score trained runs against the teacher on held-out prompts (capability, KL gap closed, checks, retention, robustness)",
    _eval_flags,
)
def cmd_eval(args) -> int:
    from ctxdistill import evaluate, report

    store = open_store(args)
    try:
        cfg = dataclass_from_args(
            evaluate.EvalConfig,
            args,
            constitution_id=constitution_version(store, args.constitution),
            runs=args.run,
            prompt_set=args.prompts,
            categories=args.categories or [],
            model=args.model or "",
        )
        evaluate.plan(cfg, store)  # refuse bad runs and prompt sets before a job exists
    except evaluate.EvalError as exc:
        raise UserError(str(exc))
    if args.report and not args.report.endswith((".md", ".html", ".json")):
        raise UserError(f"--report must name a .md, .html or .json file, not {args.report}")
    code = run_job(args, "evaluate", cfg.to_dict(), _eval_summary)
    if args.report and not args.detach:
        ev = store.list_evals()[0]  # the one just stored
        path = report.write_report(ev["results"], args.report, report.eval_tally(store, ev["id"]))
        print(f"report written to {path}", file=sys.stderr)
    return code


def _influence_flags(p):
    p.add_argument("--constitution", required=True, help="YAML or JSON constitution file")
    p.add_argument(
        *PROMPT_SET_FLAGS,
        dest="prompts",
        default="default",
        help="prompt set whose held-out prompts are used (default: default)",
    )
    p.add_argument("--n", type=int, default=8, help="number of prompts (default 8)")
    p.add_argument("--sample-tokens", type=int, default=40, help="tokens per teacher answer (default 40)")
    p.add_argument("--seed", type=int, default=0)


@command("influence", "how much each principle changes the teacher: KL with it vs without it", _influence_flags)
def cmd_influence(args) -> int:
    from ctxdistill import evaluate
    from ctxdistill.prompts import ensure_default_prompts

    constitution = load_constitution_file(args.constitution)
    store = open_store(args)
    ensure_default_prompts(store)
    prompts = [p["text"] for p in store.get_prompts(args.prompts, split="heldout")][: max(1, args.n)]
    if not prompts:
        raise UserError(f"prompt set {args.prompts!r} has no held-out prompts")
    model, tokenizer = load_model_or_fail(args)
    rows = evaluate.influence(model, tokenizer, constitution, prompts, sample_tokens=args.sample_tokens, seed=args.seed)
    human = "\n".join(f"{r['value']:.4f} [{r['ci'][0]:.4f}, {r['ci'][1]:.4f}]  {r['principle']}" for r in rows)
    emit(args, {"prompts": len(prompts), "influence": rows}, human + f"\n(KL nats/token over {len(prompts)} prompts)")
    return 0


def allow_remote_code(requested: bool) -> None:
    """--trust-remote-code: through the environment, so the job workers this command starts honour it too."""
    from ctxdistill import demo

    if not requested:
        return
    if demo.enabled():
        raise UserError("--trust-remote-code is refused in demo mode")
    os.environ["CTXDISTILL_TRUST_REMOTE_CODE"] = "1"


def _doctor_flags(p):
    p.add_argument(
        "--restore",
        action="store_true",
        help="replace the workspace database by its newest good backup (stop the app and jobs first)",
    )


@command(
    "doctor", "check the workspace database and its backups; --restore puts the newest good backup back", _doctor_flags
)
def cmd_doctor(args) -> int:
    import time

    from ctxdistill import workspace

    home = workspace.workspace_home(args.workspace)
    if args.restore:
        result = workspace.restore_backup(home)
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(result["backup_time"]))
        emit(
            args,
            result,
            f"restored the backup of {when} ({result['restored']})"
            + (f"; the previous database was moved to {result['saved_as']}" if result["saved_as"] else ""),
        )
        return 0
    db = home / workspace.DB_NAME
    status = workspace.check_database(db) if db.is_file() and db.stat().st_size else "missing or empty"
    kept = [
        {"path": str(b), "time": b.stat().st_mtime, "check": workspace.check_database(b)}
        for b in workspace.backups(home)
    ]
    orphans = sorted(str(p) for p in (home / "runs").glob("*.orphan-*"))
    lines = [f"database {db}: {status}"]
    lines += [
        f"backup {b['path']} of {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(b['time']))}: {b['check']}"
        for b in kept
    ] or ["no backup yet (one is made when the workspace is opened)"]
    lines += [f"run directory left by another database: {o}" for o in orphans]
    emit(args, {"database": str(db), "check": status, "backups": kept, "orphaned_runs": orphans}, "\n".join(lines))
    if status != "ok":
        raise UserError(
            f"the database is not usable ({status})"
            + ("; run `ctxdistill doctor --restore`" if any(b["check"] == "ok" for b in kept) else "")
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ctxdistill", description="Write a constitution and distil it into the weights.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help, configure, fn in _COMMANDS:
        p = sub.add_parser(name, help=help, description=help)
        _common(p)
        configure(p)
        p.set_defaults(func=fn)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ctxdistill.safety import redact
    from ctxdistill.store import StoreError

    args = build_parser().parse_args(argv)
    try:
        allow_remote_code(args.trust_remote_code)
        return args.func(args)
    except (UserError, StoreError) as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # anything else (a full disk, a hub error) is still one line, not a traceback
        print(f"error: {redact(f'{type(exc).__name__}: {exc}')}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
