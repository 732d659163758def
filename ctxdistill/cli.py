"""The ``ctxdistill`` command: the library's operations, headless.

    ctxdistill serve                      # the web app on http://127.0.0.1:7860
    ctxdistill preview --constitution assets/constitutions/pirate.yaml --prompt "Hi" --json

Each sub-command is a function ``cmd_<name>(args) -> int`` registered with ``@command(name, help, flags)``:
it parses its flags (flags.py), calls the library and prints. Failures are handled in one place, ``main``:
the library's domain errors (``DOMAIN_ERRORS``), the environment's (``OSError``: a full disk, the hub) and a
bad flag are one line ``error: ...`` with exit status 2; anything else is a bug, shown with its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

from ctxdistill import flags
from ctxdistill.adapters import AdapterError
from ctxdistill.constitution import ConstitutionError
from ctxdistill.eval_config import EvalConfig, EvalError
from ctxdistill.flags import add_dataclass_flags, dataclass_from_args, stage_config, whole_number
from ctxdistill.foreground import follow, summary
from ctxdistill.generate import GenerateConfig
from ctxdistill.models import ModelError, default_models_dir, hub_message, param_count
from ctxdistill.revise import ReviseConfig
from ctxdistill.safety import quote, redact
from ctxdistill.sampling import SamplingConfig
from ctxdistill.store import StoreError
from ctxdistill.train_config import TrainConfig, TrainError

_COMMANDS: list[tuple[str, str, object, object, bool]] = []


class UserError(Exception):
    """A flag or a combination of flags the command refuses: printed as one clear line, exit status 2."""


# Errors that say what is wrong with the user's input or workspace, in their own words: one line, exit 2.
# ValueError is how every config's ``validate`` refuses a value (so are ConstitutionError, ImportFileError,
# the models' ContextError, safety's UnsafeInput and demo's DemoLimit).
DOMAIN_ERRORS = (UserError, StoreError, ConstitutionError, TrainError, EvalError, ModelError, AdapterError, ValueError)


def command(name: str, help: str, configure=None, job: bool = False):
    """Register ``fn(args) -> int`` as a sub-command; ``configure(parser)`` adds its flags; a ``job``
    command also gets ``--detach``."""

    def wrap(fn):
        _COMMANDS.append((name, help, configure or (lambda parser: None), fn, job))
        return fn

    return wrap


def emit(args, payload: dict, human: str) -> None:
    print(json.dumps(payload, ensure_ascii=False) if getattr(args, "json", False) else human)


def load_constitution_file(path: str):
    from ctxdistill.constitution import ensure_valid, load

    return ensure_valid(load(path))


def load_model(args):
    """The ``--model`` (cached for this process), converted checkpoints kept in the workspace's models dir."""
    from ctxdistill.models import load_model_cached

    return load_model_cached(args.model, models_dir=default_models_dir(args.workspace))


def open_store(args):
    from ctxdistill import jobs
    from ctxdistill.store import Store

    store = Store(args.workspace)
    jobs.refresh(store)  # a worker killed while no page was open is settled by the next command
    return store


def _serve_flags(p):
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=whole_number, default=7860)
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link")


@command("serve", "start the web app", _serve_flags)
def cmd_serve(args) -> int:
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
    from ctxdistill.models import local_checkpoint

    path = local_checkpoint(args.model, default_models_dir(args.workspace))
    emit(args, {"checkpoint": path}, f"model ready: {path}")
    return 0


def _info_flags(p):
    p.add_argument("--no-measure", action="store_true", help="only the facts: skip the few seconds of calibration")
    p.add_argument("--quantize", default="auto", help="calibrate with this quantization (auto, 4bit, none)")
    p.add_argument("--precision", default="auto", help="calibrate with this compute dtype (auto, bf16, fp16, fp32)")


@command("info", "this machine, the precision policy's pick and why, the default run's predicted time", _info_flags)
def cmd_info(args) -> int:
    from ctxdistill import estimate
    from ctxdistill.precision import facts, policy

    params = param_count(args.model, default_models_dir(args.workspace))
    out = {**facts(), "precision": policy(None, args.quantize, args.precision, params).to_dict()}
    if not args.no_measure:
        cal = estimate.calibrate(
            args.model, quantize=args.quantize, precision=args.precision, models_dir=default_models_dir(args.workspace)
        )
        out["calibration"] = cal.to_dict()
        out["default_run"] = estimate.default_run(open_store(args), cal)
    emit(args, out, estimate.info_text(out))
    return 0


def _preview_flags(p):
    p.add_argument("--constitution", required=True, help="YAML or JSON constitution file")
    p.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for several)")
    p.add_argument("--samples", type=whole_number, default=1, help="samples per prompt")
    add_dataclass_flags(p, SamplingConfig, skip=("n",))


@command("preview", "answers with and without the constitution, and the mean per-token KL between them", _preview_flags)
def cmd_preview(args) -> int:
    from ctxdistill.constitution import render
    from ctxdistill.models import check_fits
    from ctxdistill.sampling import preview

    constitution = load_constitution_file(args.constitution)
    cfg = dataclass_from_args(SamplingConfig, args, n=args.samples).validate()
    if any(not p.strip() for p in args.prompt):
        raise UserError("the prompt is empty")
    model, tokenizer = load_model(args)
    check_fits(model, tokenizer, render(constitution), cfg.max_new_tokens)
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


def constitution_version(store, spec: str, owner: str = "") -> int:
    """A constitution version id from ``spec``: a version number, or a file saved as a new version."""
    from ctxdistill.constitution import content_hash, to_dict
    from ctxdistill.store import NotFound

    if spec.isdigit():
        version = int(spec) if len(spec) <= 18 else 0  # a longer one is beyond SQLite's INTEGER: none
        try:
            return store.get_constitution(version)["id"]
        except NotFound:
            raise UserError(
                f"no constitution version {spec if version else quote(spec, 20)} in this workspace"
            ) from None
    c = load_constitution_file(spec)
    return store.save_constitution(c.name, to_dict(c), content_hash(c), message=f"from {spec}", owner=owner)


def configured(store, args, build, cls, **overrides):
    """``build(cls, args, ...)``: a stage's config for ``--constitution``. Its own fields are validated
    first, so a bad flag is refused before a constitution file is saved as a version."""
    build(cls, args, constitution_id=0, **overrides).validate()
    return build(cls, args, constitution_id=constitution_version(store, args.constitution), **overrides)


def _import_flags(p):
    p.add_argument("source", help="CSV, JSONL, JSON, TXT or Parquet file, a datasets directory, or a hub id")
    p.add_argument("--prompt-set", required=True, help="prompt set to add to (created if new)")
    p.add_argument("--column", help="column holding the prompt (default: text, prompt, instruction, question...)")
    p.add_argument("--split-column", help="column holding train/heldout (default: a 'split' column if any)")
    p.add_argument("--category-column", help="column holding a category")
    p.add_argument("--heldout-fraction", type=float, default=0.1, help="held-out share without a split column")
    p.add_argument("--format", choices=("csv", "jsonl", "json", "txt", "parquet", "datasets"), help="the file type")
    p.add_argument("--recipe", action="store_true", help="samples of a HF constitutional-AI recipe dataset, for review")


@command("import", "import a prompt set, or a recipe dataset's samples", _import_flags)
def cmd_import(args) -> int:
    from ctxdistill import curate, prompts

    store = open_store(args)
    if args.recipe:
        result = curate.import_recipe_dataset(store, args.source, args.prompt_set, fmt=args.format)
        human = (
            f"imported {result['samples']} samples ({result['rounds']} revision rounds) into set "
            f"{result['set']!r} under constitution version {result['constitution_id']}"
        )
    else:
        result = prompts.import_prompts(
            store,
            args.prompt_set,
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
    emit(args, result, human)
    return 0


def _job_flags(cls):
    """The flags of a sampling job: its constitution, its config's fields and the sampling settings it leaves
    to the user."""

    def configure(p):
        p.add_argument("--constitution", required=True, help="constitution file, or a version id in the workspace")
        add_dataclass_flags(p, cls, skip=("constitution_id", "model", "owner", "sampling"))
        add_dataclass_flags(p, SamplingConfig, skip=cls.fixed_sampling)

    return configure


def run_job(args, kind: str, config: dict, resume: int | None = None) -> int:
    """Submit a job (or resume job ``resume``); unless --detach, follow its progress on stderr (Ctrl-C
    cancels it) and print its result."""
    from ctxdistill import jobs

    store = open_store(args)
    job_id = jobs.resume(store, resume) if resume is not None else jobs.submit(store, kind, config)
    if args.detach:
        emit(args, {"job_id": job_id}, f"job {job_id} started; follow it in the web app or with the store")
        return 0
    job = follow(store, job_id, say=(lambda message: None) if args.json else lambda m: print(m, file=sys.stderr))
    if job["state"] != "done":
        raise UserError(
            f"job {job_id} {job['state']}: {job['error'] or job['message']} "
            f"(log: {store.runs_dir / str(job_id) / 'log.txt'}; resume it to finish the rest)"
        )
    emit(args, {"job_id": job_id, **job["result"]}, summary(kind, job["result"]))
    return 0


@command(
    "generate", "sample the teacher's (and unprompted) answers to a prompt set", _job_flags(GenerateConfig), job=True
)
def cmd_generate(args) -> int:
    from ctxdistill import generate
    from ctxdistill.prompts import ensure_default_prompts

    store = open_store(args)
    ensure_default_prompts(store)
    cfg = configured(store, args, stage_config, GenerateConfig)
    generate.check_start(store, cfg)
    return run_job(args, "generate", cfg.to_dict())


@command("revise", "critique and revise samples with the constitution (SL-CAI)", _job_flags(ReviseConfig), job=True)
def cmd_revise(args) -> int:
    from ctxdistill import revise

    store = open_store(args)
    cfg = configured(store, args, stage_config, ReviseConfig)
    revise.check_start(store, cfg)
    return run_job(args, "revise", cfg.to_dict())


def _export_flags(p):
    from ctxdistill.curate import EXPORT_FORMATS

    p.add_argument("--constitution", help="constitution version id (or file) whose samples to export")
    p.add_argument("--format", choices=EXPORT_FORMATS, default="messages", help="output form (default messages)")
    p.add_argument("--out", required=True, help="output file (a directory for the datasets format or a run)")
    p.add_argument("--prompt-set", help="only samples of this prompt set")
    p.add_argument("--hub-id", help="also push_to_hub under this id (datasets format; needs HF_TOKEN)")
    p.add_argument("--run", type=whole_number, help="export this training run's adapter and model card instead")
    p.add_argument("--merged", action="store_true", help="with --run: the base model with the adapter merged in")
    p.add_argument("--strength", type=float, help="with --run: the adapter's scale, 0 (base) to 1.5; 1 = as trained")


@command("export", "export the accepted samples (JSONL, CSV, datasets), or a run's adapter (--run)", _export_flags)
def cmd_export(args) -> int:
    from ctxdistill import adapters
    from ctxdistill.curate import export

    store = open_store(args)
    if args.run is not None:
        strength = 1.0 if args.strength is None else args.strength
        done = adapters.export_run(store, args.run, args.out, merged=args.merged, strength=strength)
        kind = "merged model" if args.merged else "peft adapter"
        emit(args, done, f"run {args.run} exported to {done['path']} ({kind}, strength {done['strength']:g})")
        return 0
    if args.merged or args.strength is not None:
        raise UserError("--merged and --strength apply to a run's adapter: add --run RUN")
    if not args.constitution:
        raise UserError("--constitution is required (or --run RUN to export a run's adapter)")
    cid = constitution_version(store, args.constitution)
    result = export(store, cid, args.format, args.out, set_name=args.prompt_set, hub_id=args.hub_id)
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
    p.add_argument("--constitution", help="constitution file, or a version id in the workspace (not with --resume)")
    add_dataclass_flags(p, TrainConfig, skip=("constitution_id", "model", "owner"))
    p.add_argument("--resume", type=whole_number, metavar="RUN", help="continue a stopped or failed run")


@command("train", "distil the constitution into a LoRA adapter (prints the held-out KL)", _train_flags, job=True)
def cmd_train(args) -> int:
    from ctxdistill import train

    if args.resume is None and not args.constitution:
        raise UserError("--constitution is required (or --resume RUN to continue a run)")
    store = open_store(args)
    if args.resume is not None:
        config = store.get_job(args.resume)["config"]
    else:
        cfg = configured(store, args, dataclass_from_args, TrainConfig, model=args.model or "")
        train.check_start(store, cfg)
        config = cfg.to_dict()
    accelerator = train.setup_accelerator()
    if accelerator.num_processes == 1:
        return run_job(args, "train", config, resume=args.resume)
    job = train.run_distributed(store, config, accelerator, resume=args.resume)
    if job is None:  # not the main process: the main one reports
        return 0
    if job["state"] != "done":
        raise UserError(f"run {job['id']} {job['state']}: {job['error'] or job['message']}")
    emit(
        args,
        {"job_id": job["id"], "processes": accelerator.num_processes, **job["result"]},
        summary("train", job["result"]) + f" ({accelerator.num_processes} processes)",
    )
    return 0


def _eval_flags(p):
    p.add_argument("--constitution", required=True, help="constitution file, or a version id in the workspace")
    p.add_argument(
        "--run", type=whole_number, action="append", required=True, help="training run (job id) to score; repeat"
    )
    p.add_argument("--category", action="append", dest="categories", help="score only this category; repeat")
    add_dataclass_flags(p, EvalConfig, skip=("constitution_id", "runs", "categories", "model", "owner"))
    p.add_argument("--report", help="also write the report: a .md, .html or .json file")


@command("eval", "score trained runs against the teacher on held-out prompts", _eval_flags, job=True)
def cmd_eval(args) -> int:
    from ctxdistill import report
    from ctxdistill.eval_config import plan

    store = open_store(args)
    scope = {"runs": args.run, "categories": args.categories or [], "model": args.model or ""}
    cfg = configured(store, args, dataclass_from_args, EvalConfig, **scope)
    plan(cfg, store)  # refuse bad runs and prompt sets before a job exists
    if args.report and not args.report.endswith((".md", ".html", ".json")):
        raise UserError(f"--report must name a .md, .html or .json file, not {quote(args.report)}")
    code = run_job(args, "evaluate", cfg.to_dict())
    if args.report and not args.detach:
        ev = store.list_evals()[0]  # the one just stored
        path = report.write_report(ev["results"], args.report, report.eval_tally(store, ev["id"]))
        print(f"report written to {path}", file=sys.stderr)
    return code


def _influence_flags(p):
    p.add_argument("--constitution", required=True, help="YAML or JSON constitution file")
    p.add_argument(
        "--prompt-set", default="default", help="prompt set whose held-out prompts are used (default: default)"
    )
    p.add_argument("--n", type=whole_number, default=8, help="number of prompts (default 8)")
    p.add_argument("--sample-tokens", type=whole_number, default=40, help="tokens per teacher answer (default 40)")
    p.add_argument("--seed", type=whole_number, default=0)


@command("influence", "how much each principle changes the teacher: KL with it vs without it", _influence_flags)
def cmd_influence(args) -> int:
    from ctxdistill import evaluate
    from ctxdistill.prompts import ensure_default_prompts

    constitution = load_constitution_file(args.constitution)
    store = open_store(args)
    ensure_default_prompts(store)
    prompts = [p["text"] for p in store.get_prompts(args.prompt_set, split="heldout")][: max(1, args.n)]
    if not prompts:
        raise UserError(f"prompt set {quote(args.prompt_set)} has no held-out prompts")
    model, tokenizer = load_model(args)
    rows = evaluate.influence(model, tokenizer, constitution, prompts, sample_tokens=args.sample_tokens, seed=args.seed)
    human = "\n".join(f"{r['value']:.4f} [{r['ci'][0]:.4f}, {r['ci'][1]:.4f}]  {r['principle']}" for r in rows)
    emit(args, {"prompts": len(prompts), "influence": rows}, human + f"\n(KL nats/token over {len(prompts)} prompts)")
    return 0


PREFS_ACTIONS = ("make", "accept", "reject", "export", "import")


def _prefs_flags(p):
    from ctxdistill.prefs import PrefsConfig

    p.add_argument("action", nargs="?", default="make", choices=PREFS_ACTIONS, help="what to do (default make)")
    p.add_argument("file", nargs="?", help="export / import: the preference file (.jsonl, or a datasets folder)")
    _job_flags(PrefsConfig)(p)
    p.add_argument("--source", help="accept / reject / export: only pairs of this source")
    p.add_argument("--min-confidence", type=float, help="accept / reject / export: only labels this far from 0.5 (0-1)")
    p.add_argument("--status", help="accept / reject / export: only pairs in this status (export default: accepted)")


@command(
    "prefs", "preference pairs: make them (a job), accept or reject them, export or import them", _prefs_flags, job=True
)
def cmd_prefs(args) -> int:
    from ctxdistill import pair_files, prefs

    store = open_store(args)
    if args.action in ("export", "import") and not args.file:
        raise UserError(f"prefs {args.action} needs a FILE")
    if args.action == "make":
        cfg = configured(store, args, stage_config, prefs.PrefsConfig)
        prefs.check_start(store, cfg)
        return run_job(args, "prefs", cfg.to_dict())
    cid = constitution_version(store, args.constitution)
    filters = {"constitution_id": cid, "source": args.source, "min_confidence": args.min_confidence}
    if args.action == "import":
        out = pair_files.import_pairs(store, args.file, cid)
        human = f"imported {out['added']} new pairs of {out['rows']} rows (pending review)"
    elif args.action == "export":
        out = pair_files.export_pairs(store, args.file, status=args.status or "accepted", **filters)
        human = f"wrote {out['pairs']} pairs to {out['path']} ({out['format']})"
    else:
        ids = [p["id"] for p in store.list_pairs(status=args.status, **filters)]
        status = "accepted" if args.action == "accept" else "rejected"
        out = {"changed": store.set_pairs_status(ids, status), "status": status}
        human = f"{out['changed']} pairs {status}"
    emit(args, {**out, "counts": store.count_pairs(constitution_id=cid)}, human)
    return 0


def _dpo_flags(p):
    from ctxdistill.dpo import DPOConfig

    add_dataclass_flags(p, DPOConfig, skip=("model", "owner"))
    p.add_argument("--resume", type=whole_number, metavar="RUN", help="continue a stopped or failed DPO run")


@command("dpo", "train a distilled run's student on the accepted preference pairs (DPO)", _dpo_flags, job=True)
def cmd_dpo(args) -> int:
    from ctxdistill import dpo

    store = open_store(args)
    if args.resume is not None:
        return run_job(args, "dpo", {}, resume=args.resume)
    cfg = dataclass_from_args(dpo.DPOConfig, args, model=args.model or "")
    dpo.check_start(store, cfg)
    return run_job(args, "dpo", cfg.to_dict())


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
        help="replace the workspace database by its newest good backup (refused while the app or a job runs)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="with --restore: replace a database that passes its integrity check too (what is newer is lost)",
    )


@command(
    "doctor", "check the workspace database and its backups; --restore puts the newest good backup back", _doctor_flags
)
def cmd_doctor(args) -> int:
    import time

    from ctxdistill import workspace

    home = workspace.workspace_home(args.workspace)
    if args.restore:
        result = workspace.restore_backup(home, force=args.force)
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(result["backup_time"]))
        lines = [f"skipped the damaged backup {b['path']} ({b['problem']})" for b in result["skipped"]]
        lines.append(
            f"restored the backup of {when} ({result['restored']})"
            + (f"; the previous database was moved to {result['saved_as']}" if result["saved_as"] else "")
            + ("; lost: " + ", ".join(f"{n} {what}" for what, n in result["lost"].items()) if result["lost"] else "")
        )
        emit(args, result, "\n".join(lines))
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
    renames = ", ".join(f"{old} (now {new})" for old, new in flags.RENAMED_FLAGS.items())
    parser = flags.Parser(
        prog="ctxdistill",
        description="Write a constitution and distil it into the weights.",
        epilog=f"Renamed flags still accepted for now, with a warning: {renames}.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help, configure, fn, job in _COMMANDS:
        p = sub.add_parser(name, help=help, description=help)
        flags.add_common_flags(p)
        configure(p)
        if job:
            p.add_argument("--detach", action="store_true", help="start the job in the background and print its id")
        p.set_defaults(func=fn)
    return parser


def failure(exc: BaseException) -> str:
    """The one line a failure is told in: a domain error's own message, the hub's answer and what to do,
    or an environment error (OSError) with its kind; hub tokens redacted."""
    if isinstance(exc, DOMAIN_ERRORS):
        text = str(exc)
    elif isinstance(exc, OSError) and exc.filename is not None:  # the file name may be a flood of input
        text = f"{type(exc).__name__}: {exc.strerror}: {quote(exc.filename)}"
    else:
        text = hub_message(exc) or f"{type(exc).__name__}: {exc}"
    return redact(" ".join(text.split()))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        allow_remote_code(args.trust_remote_code)
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except (*DOMAIN_ERRORS, OSError) as exc:
        print(f"error: {failure(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug: its traceback is what a report of it needs
        print(redact(traceback.format_exc()), end="", file=sys.stderr)
        print(f"error: internal error ({failure(exc)}); please report it with the traceback above", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
