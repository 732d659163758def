"""The ``ctxdistill`` command: the library's operations, headless.

    ctxdistill serve                      # the web app on http://127.0.0.1:7860
    ctxdistill preview --constitution assets/constitutions/pirate.yaml --prompt "Hi" --json

Each sub-command is a function ``cmd_<name>(args) -> int`` registered with ``@command(name, help, flags)``;
errors that a user can fix are raised as ``UserError`` and printed without a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields

_COMMANDS: list[tuple[str, str, object, object]] = []


class UserError(Exception):
    """Bad input: printed as one clear line, exit status 2."""


def command(name: str, help: str, configure=None):
    """Register ``fn(args) -> int`` as a sub-command; ``configure(parser)`` adds its flags."""

    def wrap(fn):
        _COMMANDS.append((name, help, configure or (lambda parser: None), fn))
        return fn

    return wrap


def add_dataclass_flags(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """One ``--flag`` per dataclass field, its help text taken from the field's metadata."""
    for f in fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = type(f.default) if f.default is not None and not callable(f.default) else str
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=f.metadata.get("help", ""))
        else:
            parser.add_argument(flag, type=kind, default=None, help=f"{f.metadata.get('help', '')} (default {f.default})")


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
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def load_constitution_file(path: str):
    from ctxdistill.constitution import ConstitutionError, ensure_valid, load

    try:
        return ensure_valid(load(path))
    except FileNotFoundError:
        raise UserError(f"constitution file not found: {path}")
    except ConstitutionError as exc:
        raise UserError(f"{path}: {exc}")


def load_model_or_fail(args, **kwargs):
    from ctxdistill.models import ModelError, get_model

    try:
        return get_model(args.model, models_dir=_models_dir(args), **kwargs)
    except ModelError as exc:
        raise UserError(str(exc))


def _models_dir(args):
    import os

    from ctxdistill.models import default_models_dir
    from ctxdistill.store import workspace_home

    if os.environ.get("CTXDISTILL_MODELS"):
        return default_models_dir()
    return workspace_home(args.workspace) / "models"


def open_store(args):
    from ctxdistill.store import Store

    return Store(args.workspace)


def _serve_flags(p):
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link")


@command("serve", "start the web app", _serve_flags)
def cmd_serve(args) -> int:
    import os

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


def _preview_flags(p):
    from ctxdistill.generate import SamplingConfig

    p.add_argument("--constitution", required=True, help="YAML or JSON constitution file")
    p.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for several)")
    p.add_argument("--samples", type=int, default=1, help="samples per prompt")
    add_dataclass_flags(p, SamplingConfig, skip=("n",))


@command("preview", "answers with and without the constitution, and the mean per-token KL between them", _preview_flags)
def cmd_preview(args) -> int:
    from ctxdistill.constitution import render
    from ctxdistill.generate import SamplingConfig, preview

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
    human = "\n\n".join(
        f"# {q}\n-- with the constitution --\n" + "\n".join(a) + "\n-- without --\n" + "\n".join(b)
        for q, a, b in zip(result.prompts, result.prompted, result.unprompted)
    ) + f"\n\nmean KL: {result.mean_kl:.3f} nats/token"
    emit(args, result.to_json(), human)
    return 0


def check_context(system: str, tokenizer, model, max_new_tokens: int) -> int:
    """Raise UserError if the rendered constitution leaves no room for a prompt and an answer."""
    from ctxdistill.models import context_window

    used = len(tokenizer.encode(system))
    limit = context_window(model)
    if used + max_new_tokens + 64 > limit:
        raise UserError(
            f"the rendered constitution is {used} tokens; with {max_new_tokens} new tokens it exceeds "
            f"the model's context window of {limit} tokens"
        )
    return used


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctxdistill", description="Write a constitution and distil it into the weights.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help, configure, fn in _COMMANDS:
        p = sub.add_parser(name, help=help, description=help)
        _common(p)
        configure(p)
        p.set_defaults(func=fn)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
