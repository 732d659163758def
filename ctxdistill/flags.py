"""Command-line flags from the config dataclasses, and the parser the ``ctxdistill`` command uses.

    add_dataclass_flags(parser, TrainConfig, skip=("owner",))   # --steps, --loss, --prompt-set ...
    cfg = dataclass_from_args(TrainConfig, args, model="")      # the flags given, the rest at defaults

A field's flag is its name with dashes, or the ``"flag"`` of its metadata (``set_name`` is
``--prompt-set`` everywhere); its help text is the metadata's ``"help"``. Integer flags take whole
numbers within SQLite's INTEGER range, since ids and counts are stored or compared as one. Old
spellings of renamed flags (``RENAMED_FLAGS``) still work, with a warning on stderr.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from .safety import quote

# Old spellings of renamed flags, accepted with a warning until they are removed.
RENAMED_FLAGS = {"--set": "--prompt-set", "--set-name": "--prompt-set", "--prompts": "--prompt-set"}

MAX_INT = 2**63 - 1  # SQLite's INTEGER


def renamed(argv: list[str]) -> list[str]:
    """``argv`` with every old flag spelling (``RENAMED_FLAGS``) replaced by its name, each said on stderr."""
    out = []
    for arg in argv:
        flag, eq, value = arg.partition("=")
        if flag in RENAMED_FLAGS:
            print(f"warning: {flag} is deprecated and will be removed; use {RENAMED_FLAGS[flag]}", file=sys.stderr)
            arg = RENAMED_FLAGS[flag] + eq + value
        out.append(arg)
    return out


class Parser(argparse.ArgumentParser):
    """argparse with its errors as one line ``error: ...`` (exit status 2) and the renamed flags accepted."""

    def error(self, message):
        cut = message if len(message) <= 300 else message[:300] + "…"  # argparse quotes a bad value whole
        print(f"error: {cut} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)

    def parse_known_args(self, args=None, namespace=None):
        return super().parse_known_args(renamed(sys.argv[1:] if args is None else list(args)), namespace)


def whole_number(text: str) -> int:
    """An integer flag's value, refused outside SQLite's INTEGER range."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {quote(text)}") from None
    if abs(value) > MAX_INT:
        raise argparse.ArgumentTypeError(f"{quote(text)} is out of range (at most {MAX_INT})")
    return value


def _dest(f) -> str:
    """A dataclass field's flag without its dashes: the flag its metadata names, else the field's name."""
    return f.metadata.get("flag", f.name).replace("-", "_")


def add_dataclass_flags(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """One ``--flag`` per field of ``cls`` not in ``skip``, its help text from the field's metadata."""
    for f in fields(cls):
        if f.name in skip:
            continue
        flag, help = "--" + _dest(f).replace("_", "-"), f.metadata.get("help", "")
        kind = type(f.default) if f.default is not None and not callable(f.default) else str
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help)
        else:
            kind = whole_number if kind is int else kind
            parser.add_argument(flag, type=kind, default=None, help=f"{help} (default {f.default})")


def dataclass_from_args(cls, args, **overrides):
    """Build ``cls`` from the flags that were given, leaving the others at their defaults."""
    values = {f.name: getattr(args, _dest(f)) for f in fields(cls) if getattr(args, _dest(f), None) is not None}
    values.update(overrides)
    return cls(**values)


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    """The flags every command takes: where the workspace is, which model, and how to print."""
    parser.add_argument("--workspace", help="workspace directory (default $CTXDISTILL_HOME or ./workspace)")
    parser.add_argument("--model", help="hub id, local directory or .gguf file (default: the embedded SmolLM2-135M)")
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run the model repository's own Python code (off by default; refused in demo mode)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def stage_config(cls, args, **overrides):
    """A sampling stage's config (``config.SamplingStageConfig``) from the flags given: its own fields and
    its ``sampling`` settings, validated (ValueError names every problem)."""
    from .sampling import SamplingConfig

    sampling = {
        f.name: getattr(args, f.name) for f in fields(SamplingConfig) if getattr(args, f.name, None) is not None
    }
    return dataclass_from_args(cls, args, model=args.model or "", sampling=sampling, **overrides).validate()
