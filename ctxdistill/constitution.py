"""Constitutions: the principles a model should follow, as data.

A constitution is a name, an optional preamble, a list of principles and
optional few-shot example messages. It is stored as YAML (what people edit)
or JSON (what programs exchange); `render` turns it into the exact system
prompt the teacher sees.

    c = load("assets/constitutions/pirate.yaml")
    ensure_valid(c)
    print(render(c))

Parsing is deliberately separate from validation: `parse` accepts a draft
with, say, an empty principle so that the editor can show it, and callers
run `ensure_valid` before saving a version. Every error is a sentence a user
can act on, collected into one `ConstitutionError`.

Also reads the JSON used by the Hugging Face constitutional-AI recipe
(`{"constitutions": [{"critic", "revision"}], "system_chat": [[...]]}`),
see `from_hf_recipe`.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import regex
import yaml

from . import hf_recipe
from .safety import quote

CHECK_KINDS = ("starts_with", "contains", "not_contains", "regex", "max_words")
EXAMPLE_ROLES = ("user", "assistant")
# Parsing is bounded whatever the text: a size limit, a nesting limit (a constitution is four levels
# deep), and no YAML aliases (a few hundred bytes of nested aliases expand to gigabytes).
MAX_TEXT_BYTES = 1 << 20
MAX_DEPTH = 32
# A user's regex check runs with a time limit (catastrophic backtracking), and releases the GIL
# while it runs, so a slow pattern holds up only its own caller.
REGEX_TIMEOUT_S = 0.05


class ConstitutionError(ValueError):
    """One or more problems with a constitution; `.errors` lists them as sentences."""

    def __init__(self, errors):
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        super().__init__(" ".join(self.errors))


@dataclass
class Check:
    """An automatic test of one principle on a response (used by evaluation)."""

    kind: str
    value: str

    def passes(self, text: str) -> bool:
        v = self.value
        if self.kind == "starts_with":
            return text.lstrip().lower().startswith(v.lower())
        if self.kind == "contains":
            return v.lower() in text.lower()
        if self.kind == "not_contains":
            return v.lower() not in text.lower()
        if self.kind == "regex":
            try:
                return regex.search(v, text, regex.I | regex.S, timeout=REGEX_TIMEOUT_S, concurrent=True) is not None
            except TimeoutError:
                return False  # could not be shown to pass in time: counted as failed
        if self.kind == "max_words":
            return len(text.split()) <= int(v)
        raise ValueError(f"Unknown check kind {quote(self.kind)}.")

    def describe(self) -> str:
        return {
            "starts_with": f'starts with "{self.value}"',
            "contains": f'contains "{self.value}"',
            "not_contains": f'does not contain "{self.value}"',
            "regex": f"matches /{self.value}/",
            "max_words": f"at most {self.value} words",
        }.get(self.kind, f"{self.kind} {self.value!r}")


@dataclass
class Principle:
    id: str
    text: str  # what the teacher reads, one item of the numbered list
    critique: str = ""  # critique request for SL-CAI revision passes
    revision: str = ""  # revision request that follows the critique
    check: Check | None = None


@dataclass
class Constitution:
    name: str
    principles: list[Principle]
    description: str = ""  # for people; never shown to the model
    preamble: str = ""  # shown to the model before the numbered principles
    examples: list[dict] = field(default_factory=list)  # few-shot chat messages


# ---------------------------------------------------------------- rendering


def render(c: Constitution) -> str:
    """The system prompt exactly as the teacher sees it.

    The preamble (if any), a blank line, then one line per principle. Texts are stripped of
    surrounding whitespace; nothing else is changed. No list numbering: small chat models copy
    a numbered system prompt's format into their answers ("1. ...") instead of its content.
    """
    items = "\n".join(p.text.strip() for p in c.principles)
    preamble = c.preamble.strip()
    return f"{preamble}\n\n{items}" if preamble else items


# --------------------------------------------------------------- validation


def _where(i: int, p: Principle) -> str:
    return f"Principle {i} ({p.id})" if p.id.strip() else f"Principle {i}"


def validate(c: Constitution) -> list[str]:
    """Every problem with `c` as a sentence; [] when it is fine to save and use."""
    errors = []
    if not c.name.strip():
        errors.append("The constitution needs a name.")
    if not c.principles:
        errors.append("The constitution is empty: add at least one principle.")
    seen: dict[str, list[int]] = {}
    for i, p in enumerate(c.principles, 1):
        where = _where(i, p)
        if not p.id.strip():
            errors.append(f'Principle {i} has an empty id: give it a short name such as "p{i}".')
        else:
            seen.setdefault(p.id, []).append(i)
        if not p.text.strip():
            errors.append(f"{where} has no text: write what the model should do.")
        if p.check is not None:
            errors += _check_errors(where, p.check)
    for pid, where in seen.items():
        if len(where) > 1:
            positions = ", ".join(map(str, where[:-1])) + f" and {where[-1]}"
            errors.append(
                f'The id "{pid}" is used by more than one principle (principles {positions}); ids must be unique.'
            )
    for j, m in enumerate(c.examples, 1):
        if m.get("role") not in EXAMPLE_ROLES:
            errors.append(f'Example message {j} has role {m.get("role")!r}; use "user" or "assistant".')
        if not str(m.get("content", "")).strip():
            errors.append(f"Example message {j} has no content.")
    return errors


def _check_errors(where: str, check: Check) -> list[str]:
    kind, value = check.kind, check.value
    if kind not in CHECK_KINDS:
        return [f'{where} has an unknown check kind "{kind}"; use one of: {", ".join(CHECK_KINDS)}.']
    if kind == "regex":
        try:
            regex.compile(value, regex.I | regex.S)
        except regex.error as e:
            return [f"{where} has an invalid regex check /{value}/: {e}."]
    elif kind == "max_words":
        try:
            ok = int(value) > 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            return [f'{where} has a max_words check of "{value}"; it must be a positive whole number.']
    elif not value.strip():
        return [f"{where} has a {kind} check with an empty value."]
    return []


def ensure_valid(c: Constitution) -> Constitution:
    errors = validate(c)
    if errors:
        raise ConstitutionError(errors)
    return c


# ------------------------------------------------------- dict conversion


def to_dict(c: Constitution) -> dict:
    """Plain data with every field present, keys in a fixed order."""
    return {
        "name": c.name,
        "description": c.description,
        "preamble": c.preamble,
        "principles": [
            {
                "id": p.id,
                "text": p.text,
                "critique": p.critique,
                "revision": p.revision,
                "check": None if p.check is None else {"kind": p.check.kind, "value": p.check.value},
            }
            for p in c.principles
        ],
        "examples": [dict(m) for m in c.examples],
    }


_TOP_KEYS = ("name", "description", "preamble", "principles", "examples")
_PRINCIPLE_KEYS = ("id", "text", "critique", "revision", "check")


def _type_name(x) -> str:
    return {
        str: "text",
        dict: "a mapping",
        list: "a list",
        bool: "true/false",
        int: "a number",
        float: "a number",
        type(None): "nothing",
    }.get(type(x), type(x).__name__)


def _text(x, what: str, errors: list, default: str | None = "", allow_number=False):
    """Return x as str, or record an error. None means 'not given'."""
    if x is None and default is not None:
        return default
    if isinstance(x, str):
        return x
    if allow_number and isinstance(x, (int, float)) and not isinstance(x, bool):
        return str(x)
    errors.append(f"{what} must be text, not {_type_name(x)}.")
    return ""


def _check_from(x, where: str, errors: list) -> Check | None:
    if x is None:
        return None
    if not isinstance(x, dict):
        errors.append(
            f'{where}: check must be a mapping like {{kind: starts_with, value: "Arr!"}}, not {_type_name(x)}.'
        )
        return None
    if "kind" in x:
        extra = sorted(set(x) - {"kind", "value"})
        if extra:
            errors.append(f"{where}: check has unknown field(s) {', '.join(map(str, extra))}; use kind and value.")
        kind = _text(x["kind"], f"{where}: check kind", errors, default=None)
        value = _text(x.get("value"), f"{where}: check value", errors, allow_number=True)
        return Check(kind, value)
    if len(x) == 1:  # shorthand {starts_with: "Arr!"}
        ((kind, value),) = x.items()
        return Check(str(kind), _text(value, f"{where}: check value", errors, allow_number=True))
    errors.append(f'{where}: check must have a kind and a value, or be a single pair such as {{starts_with: "Arr!"}}.')
    return None


def from_dict(d: dict) -> Constitution:
    """Build a Constitution from plain data, collecting every structural error.

    Principles may be mappings or bare strings (the text). Missing ids become
    p1, p2, ... by position (skipping ids already taken).
    """
    if not isinstance(d, dict):
        raise ConstitutionError(f"A constitution must be a mapping with a name and principles, not {_type_name(d)}.")
    errors: list[str] = []
    unknown = [k for k in d if k not in _TOP_KEYS]
    if unknown:
        errors.append(f"Unknown field(s) {', '.join(map(str, unknown))}; a constitution has: {', '.join(_TOP_KEYS)}.")
    if "name" not in d:
        errors.append("The constitution has no 'name' field.")
    name = _text(d.get("name"), "The name", errors, allow_number=True)
    description = _text(d.get("description"), "The description", errors)
    preamble = _text(d.get("preamble"), "The preamble", errors)

    raw = d.get("principles")
    if "principles" not in d:
        errors.append("The constitution has no 'principles' field.")
        raw = []
    elif raw is None:
        raw = []
    elif not isinstance(raw, list):
        errors.append(f"'principles' must be a list, not {_type_name(raw)}.")
        raw = []
    taken = {str(p["id"]) for p in raw if isinstance(p, dict) and p.get("id") is not None}
    principles = []
    for i, p in enumerate(raw, 1):
        where = f"Principle {i}"
        if isinstance(p, str):
            p = {"text": p}
        if not isinstance(p, dict):
            errors.append(f"{where} must be a mapping or text, not {_type_name(p)}.")
            continue
        bad = [k for k in p if k not in _PRINCIPLE_KEYS]
        if bad:
            errors.append(
                f"{where} has unknown field(s) {', '.join(map(str, bad))}; "
                f"a principle has: {', '.join(_PRINCIPLE_KEYS)}."
            )
        if "text" not in p:
            errors.append(f"{where} has no 'text' field.")
        pid = p.get("id")
        if pid is None:
            n = i
            while f"p{n}" in taken:
                n += 1
            pid = f"p{n}"
            taken.add(pid)
        principles.append(
            Principle(
                id=_text(pid, f"{where}: id", errors, allow_number=True),
                text=_text(p.get("text"), f"{where}: text", errors),
                critique=_text(p.get("critique"), f"{where}: critique", errors),
                revision=_text(p.get("revision"), f"{where}: revision", errors),
                check=_check_from(p.get("check"), where, errors),
            )
        )

    examples = []
    raw_ex = d.get("examples") or []
    if not isinstance(raw_ex, list):
        errors.append(f"'examples' must be a list of messages, not {_type_name(raw_ex)}.")
        raw_ex = []
    for j, m in enumerate(raw_ex, 1):
        if not isinstance(m, dict) or set(m) != {"role", "content"}:
            errors.append(f"Example message {j} must be a mapping with exactly 'role' and 'content'.")
            continue
        examples.append(
            {
                "role": _text(m["role"], f"Example message {j}: role", errors),
                "content": _text(m["content"], f"Example message {j}: content", errors),
            }
        )
    if errors:
        raise ConstitutionError(errors)
    return Constitution(name=name, principles=principles, description=description, preamble=preamble, examples=examples)


def from_row(row: dict) -> Constitution:
    """The Constitution of a stored version (a ``constitutions`` row of the workspace)."""
    return from_dict(row["content"])


def from_hf_recipe(obj: dict, name: str = "imported") -> Constitution:
    """Convert the Hugging Face constitutional-AI recipe JSON (see hf_recipe.py)."""
    principles, examples, errors = hf_recipe.read(obj)
    if errors:
        raise ConstitutionError(errors)
    return Constitution(
        name=name,
        principles=[Principle(**p) for p in principles],
        description="Imported from a constitutional-AI recipe file.",
        examples=examples,
    )


# ---------------------------------------------------------- text formats


class _BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses aliases and nesting deeper than MAX_DEPTH."""

    _depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not accepted", self.peek_event().start_mark
            )
        if self._depth >= MAX_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"it is nested more than {MAX_DEPTH} levels deep", self.peek_event().start_mark
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def parse(text: str, fmt: str | None = None, name: str = "imported") -> Constitution:
    """Parse YAML or JSON text (auto: JSON if it starts with { or [).

    Structural problems raise ConstitutionError; semantic ones (empty
    principle, bad regex, ...) are left for `validate`. A bare list is read
    as the principles of a constitution named `name`; `name` also names
    constitutions imported from the HF recipe format. Texts over MAX_TEXT_BYTES,
    YAML aliases and nesting deeper than MAX_DEPTH are refused.
    """
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_TEXT_BYTES:
        raise ConstitutionError(
            f"The text is {size / 2**20:.1f} MB; a constitution may be at most {MAX_TEXT_BYTES / 2**20:g} MB."
        )
    if fmt is None:
        fmt = "json" if text.lstrip().startswith(("{", "[")) else "yaml"
    fmt = fmt.lower()
    if fmt == "json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConstitutionError(f"This is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}.") from None
        except RecursionError:  # the decoder's own nesting limit, well below what a stack holds
            raise ConstitutionError("This JSON is nested too deeply to be a constitution.") from None
        except ValueError as e:  # e.g. an integer of more digits than Python converts
            raise ConstitutionError(f"This is not valid JSON: {e}.") from None
    elif fmt in ("yaml", "yml"):
        try:
            obj = yaml.load(text, Loader=_BoundedLoader)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(e, "problem", None) or str(e)
            raise ConstitutionError(f"This is not valid YAML: {problem}{where}.") from None
        except ValueError as e:
            raise ConstitutionError(f"This is not valid YAML: {e}.") from None
    else:
        raise ConstitutionError(f'Unknown format "{fmt}"; use yaml or json.')
    if obj is None:
        raise ConstitutionError("The text is empty: a constitution needs a name and principles.")
    if isinstance(obj, list):
        obj = {"name": name, "principles": obj}
    if hf_recipe.is_recipe(obj):
        return from_hf_recipe(obj, name=name)
    return from_dict(obj)


class _Dumper(yaml.SafeDumper):
    """SafeDumper that writes multi-line strings as | blocks, for readable diffs, and a line with an
    apostrophe in double quotes (valid plain, but editors' YAML colouring takes it for a quote)."""


def _str_representer(dumper, s):
    style = "|" if "\n" in s else '"' if "'" in s else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", s, style=style)


_Dumper.add_representer(str, _str_representer)


def _readable(c: Constitution) -> dict:
    """to_dict without empty optional fields, so hand-written files stay short."""
    d = to_dict(c)
    for p in d["principles"]:
        for k in ("critique", "revision", "check"):
            if not p[k]:
                del p[k]
    return {k: v for k, v in d.items() if k in ("name", "principles") or v}


def dumps(c: Constitution, fmt: str = "yaml") -> str:
    fmt = fmt.lower()
    if fmt == "json":
        return json.dumps(to_dict(c), indent=2, ensure_ascii=False) + "\n"
    if fmt in ("yaml", "yml"):
        return yaml.dump(
            _readable(c), Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False, width=88
        )
    raise ConstitutionError(f'Unknown format "{fmt}"; use yaml or json.')


def _fmt_for(path: Path) -> str | None:
    return {".yaml": "yaml", ".yml": "yaml", ".json": "json"}.get(path.suffix.lower())


def load(path_or_bytes) -> Constitution:
    """Read a constitution from a path (str/Path), bytes, or a binary file object."""
    fmt, label, stem = None, "The uploaded file", "imported"
    if isinstance(path_or_bytes, (bytes, bytearray)):
        data = bytes(path_or_bytes)
    elif hasattr(path_or_bytes, "read"):
        data = path_or_bytes.read()
        if isinstance(data, str):
            data = data.encode("utf-8")
    else:
        path = Path(path_or_bytes)
        fmt, label, stem = _fmt_for(path), path.name, path.stem
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ConstitutionError(f"Could not read {path}: {e.strerror or e}.") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConstitutionError(
            f"{label} is not UTF-8 text (byte 0x{data[e.start]:02x} at "
            f"position {e.start}); save it as UTF-8 and try again."
        ) from None
    return parse(text, fmt, name=stem)


def save(c: Constitution, path) -> None:
    """Write YAML, or JSON when the path ends in .json; atomic replace."""
    path = Path(path)
    text = dumps(c, _fmt_for(path) or "yaml")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ------------------------------------------------------ identity and diff


def content_hash(c: Constitution) -> str:
    """sha256 of canonical JSON of to_dict: equal content, equal hash."""
    canon = json.dumps(to_dict(c), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def diff(a: Constitution, b: Constitution, a_label: str = "a", b_label: str = "b") -> str:
    """Unified diff of the YAML of two versions; "" when they are the same."""
    lines = difflib.unified_diff(
        dumps(a).splitlines(keepends=True), dumps(b).splitlines(keepends=True), fromfile=a_label, tofile=b_label
    )
    return "".join(lines)
