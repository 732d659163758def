"""Guards for what users send: names that become paths, uploaded files, hub tokens, and cells
that a spreadsheet would run as formulas.

    path = safe_path(download_dir, f"{name}.yaml")          # UnsafeInput if it leaves download_dir
    check_upload(path, (".yaml", ".json"), max_bytes=2 << 20)
    text = redact(str(exc))                                  # no token ends up in the store, a log or a message
    row = {k: spreadsheet_cell(v) for k, v in row.items()}   # "=HYPERLINK(...)" -> "'=HYPERLINK(...)"
    raise ValueError(f"no prompt set {quote(name)}")       # a 1 MB name is quoted by its first 60 characters
    check_set("the capability set x.jsonl", size=path.stat().st_size, rows=len(lines), longest=...)
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from . import demo

# Uploads we read as text must be UTF-8 without NUL bytes; these formats are binary.
BINARY_MAGIC = {".parquet": b"PAR1"}
TOKEN_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_API_TOKEN")
# Tokens that are not in the environment still look like this: a hub token, or whatever follows
# "Bearer" or an Authorization header (a hub that echoes the request's headers in its error).
TOKEN_PATTERN = re.compile(r"\bhf_[A-Za-z0-9]{8,}|(?<=Bearer )[^\s'\",]+|(?<=Authorization: )[^\s'\",]+", re.I)
# A cell starting with one of these is a formula to Excel, LibreOffice and Google Sheets (OWASP,
# "CSV injection"); a leading quote makes it text.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class UnsafeInput(ValueError):
    """A name or file refused for safety; the message says why."""


def safe_path(root: str | os.PathLike, name: str | os.PathLike) -> Path:
    """``root / name``, refusing any name that is absolute, climbs with ``..``, holds a NUL or a
    backslash, or resolves (through symlinks) outside ``root``."""
    text = str(name)
    if not text.strip() or "\x00" in text or "\\" in text:
        raise UnsafeInput(f"refused file name {text!r}")
    rel = Path(text)
    if rel.is_absolute() or ".." in rel.parts or text.startswith("~"):
        raise UnsafeInput(f"refused file name {text!r}: it must stay inside the workspace")
    base = Path(root).resolve()
    target = (base / rel).resolve()
    if target != base and base not in target.parents:
        raise UnsafeInput(f"refused file name {text!r}: it leads outside the workspace")
    return target


def check_upload(path: str | os.PathLike, suffixes: tuple[str, ...], max_bytes: int) -> Path:
    """The uploaded file if its type and size are acceptable, else UnsafeInput.

    The type is checked twice: the name's suffix, and the content (UTF-8 text, or a binary
    format's magic bytes), so a renamed binary is not handed to a text parser."""
    p = Path(path)
    if not p.is_file():
        raise UnsafeInput("the upload is missing or not a file")
    suffix = p.suffix.lower()
    if suffix not in suffixes:
        raise UnsafeInput(f"{p.name}: file type {suffix or '(none)'} is not accepted; use {', '.join(suffixes)}")
    size = p.stat().st_size
    if size > max_bytes:
        raise UnsafeInput(f"{p.name} is {size / 2**20:.1f} MB; uploads are limited to {max_bytes / 2**20:g} MB")
    magic = BINARY_MAGIC.get(suffix)
    with p.open("rb") as f:
        head = f.read(min(size, 1 << 16))
    if magic is not None:
        if not head.startswith(magic):
            raise UnsafeInput(f"{p.name} is not a {suffix} file")
    elif b"\x00" in head or not _utf8_prefix(head):
        raise UnsafeInput(f"{p.name} is not UTF-8 text")
    return p


def check_set(what: str, *, size: int | None = None, rows: int | None = None, longest=None) -> None:
    """UnsafeInput, naming the limit, when a set a user gives (prompts, capability items, attacks) is above
    the limits in effect (demo.limit: set_mb for its size in bytes, set_items for its rows, item_kb for
    its longest row, given as (row number, bytes)). Checked before the set is read into anything."""

    def over(name: str, value: float) -> float | None:
        cap = demo.limit(name)
        return cap if cap is not None and value > cap else None

    if size is not None and (cap := over("set_mb", size / 2**20)):
        problem = f"is {size / 2**20:.1f} MB; a set may be at most {cap:g} MB"
    elif rows is not None and (cap := over("set_items", rows)):
        problem = f"has {rows:,} rows; a set may hold at most {cap:,}"
    elif longest is not None and (cap := over("item_kb", longest[1] / 1024)):
        problem = f"row {longest[0]} is {longest[1] / 1024:,.0f} KB; one row may be at most {cap:g} KB"
    else:
        return
    raise UnsafeInput(f"{what} {problem}: {demo.limit_hint()}; nothing was stored")


def longest_row(lines: list[str]) -> tuple[int, int]:
    """(1-based number, UTF-8 bytes) of the longest of ``lines``, for check_set."""
    sizes = [len(line.encode("utf-8", "surrogatepass")) for line in lines] or [0]
    n = max(range(len(sizes)), key=sizes.__getitem__)
    return n + 1, sizes[n]


def _utf8_prefix(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError as exc:  # a multi-byte character cut at the end of the read is fine
        return exc.start >= len(data) - 3


def secrets(env=None) -> list[str]:
    """Hub tokens set in the environment (the only place they are read from)."""
    env = os.environ if env is None else env
    return [v for v in (env.get(k) for k in TOKEN_VARS) if v and len(v) >= 8]


def hub_token() -> str | None:
    """The token to push to the Hub with: the first hub token set in the environment, if any."""
    found = secrets()
    return found[0] if found else None


def redact(text: str, env=None) -> str:
    """``text`` with every hub token from the environment, and anything shaped like a token or
    following "Bearer" / "Authorization:", replaced by ``***``."""
    for secret in secrets(env):
        text = text.replace(secret, "***")
    return TOKEN_PATTERN.sub("***", text)


def quote(text, limit: int = 60) -> str:
    """What a message shows of user input: ``repr`` of the text, cut to its first ``limit`` characters
    (and its length) when longer, so that no message echoes a flood."""
    text = str(text)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text):,} characters)"


def spreadsheet_cell(value):
    """A CSV cell that spreadsheets show as text: strings starting with = + - @ tab or CR get a
    leading single quote (OWASP's advice); anything else is returned as it is."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value
