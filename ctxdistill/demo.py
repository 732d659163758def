"""Demo mode: what changes when the app runs as a public Hugging Face Space.

Spaces set ``SPACE_ID``; ``CTXDISTILL_DEMO=1`` turns the same mode on anywhere (``=0`` off).
In demo mode every visitor gets their own rows in the one workspace (the store's ``owner``),
the work one visitor can ask for is capped (``DemoCaps``, the one table of caps that every callback
and API endpoint checks: each cap overridable by an environment variable, e.g.
``CTXDISTILL_DEMO_STEPS=200`` on a duplicated Space with a GPU; the few caps that hold locally too,
more generous, carry their local value: ``limit(name)`` gives the one in effect),
``trust_remote_code`` is never honoured, and model-heavy calls are wrapped for ZeroGPU.

Who a visitor is comes from a signed cookie, not from gradio's session hash: the session hash is
new at every page load (a reload would lose the visitor's runs) and is sent by the client, so a
client that replays another visitor's hash would get their workspace. ``VisitorCookie`` gives each
browser a random id signed with HMAC-SHA256 under a secret kept in the workspace (``visitor.key``);
the cookie is HttpOnly (page scripts cannot read it), lasts 30 days, and over HTTPS is
``SameSite=None; Secure; Partitioned`` so that it also works in the huggingface.co iframe of a
Space. An id that does not carry the server's signature is refused, so no client can pick one.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass, field, fields
from pathlib import Path

ENV_PREFIX = "CTXDISTILL_DEMO_"
VISITOR_COOKIE = "ctxdistill_visitor"
VISITOR_MAX_AGE_S = 30 * 24 * 3600


class DemoLimit(ValueError):
    """A request above a demo cap; the message names the cap and how to lift it."""


@dataclass(frozen=True)
class DemoCaps:
    """What one demo visitor may ask for at a time. Env: CTXDISTILL_DEMO_<NAME upper-cased>."""

    prompts: int = 48  # prompts per imported set, and per sampling, training or evaluation job
    steps: int = 40  # training steps per run
    samples: int = 2  # samples per prompt (preview and sampling)
    rounds: int = 2  # critique/revision rounds per sample
    max_new_tokens: int = 64  # new tokens per answer
    batch_size: int = 8  # answers per training micro-batch, prompts per sampling batch
    grad_accum: int = 4  # micro-batches per training step
    lora_r: int = 32  # LoRA rank
    text_kb: float = 64.0  # one constitution or draft, prompt, note or edited answer, as stored
    upload_mb: float = 2.0  # size of one uploaded file
    jobs_running: int = 1  # jobs of one visitor running at once
    jobs_queued: int = 1  # jobs of one visitor waiting for their turn
    # A prompt, capability or attack set a user gives (checked before it is read into anything): its file
    # size, its lines or records, and its longest line (one prompt, item or template).
    set_mb: float = field(default=2.0, metadata={"local": 64.0})
    set_items: int = field(default=500, metadata={"local": 50_000})
    item_kb: float = field(default=64.0, metadata={"local": 256.0})
    pairs: int = 200  # preference pairs per pairs job, import or DPO run

    def __post_init__(self):
        bad = [
            f"{ENV_PREFIX}{f.name.upper()}={getattr(self, f.name)}"
            for f in fields(self)
            if not getattr(self, f.name) > 0
        ]
        if bad:
            raise DemoLimit(f"{', '.join(bad)}: every demo cap must be above 0")

    @classmethod
    def from_env(cls, env=None) -> "DemoCaps":
        env = os.environ if env is None else env
        values = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw:
                try:
                    values[f.name] = type(f.default)(raw)
                except ValueError:
                    raise DemoLimit(f"{ENV_PREFIX}{f.name.upper()}={raw!r} is not a number") from None
        return cls(**values)

    @property
    def upload_bytes(self) -> int:
        return int(self.upload_mb * 1024 * 1024)

    def check(self, **values) -> None:
        """Raise DemoLimit when any given value (by cap name) is above its cap; None is unchecked."""
        over = [
            f"{name.replace('_', ' ')} {value} > {getattr(self, name)}"
            for name, value in values.items()
            if value is not None and value > getattr(self, name)
        ]
        if over:
            raise DemoLimit(
                "Above the demo limits (" + "; ".join(over) + "). Duplicate this Space to run "
                "longer jobs on your own hardware."
            )

    def check_jobs(self, waiting: int, running: int) -> None:
        """DemoLimit when a visitor who has ``waiting`` jobs queued and ``running`` running may queue no more."""
        if waiting >= self.jobs_queued:
            raise DemoLimit(
                f"You have {running} job{'s' if running != 1 else ''} running and {waiting} waiting: one visitor may "
                f"have {self.jobs_running} running and {self.jobs_queued} waiting in this demo. Wait for one to "
                "finish or cancel one, then start this again (or duplicate this Space to run more at once)."
            )

    def summary(self) -> str:
        return (
            f"at most {self.prompts} prompts per set or job, {self.steps} training steps, "
            f"{self.samples} samples per prompt, {self.rounds} revision rounds, "
            f"{self.max_new_tokens} new tokens per answer, "
            f"batches of {self.batch_size}, {self.grad_accum} accumulation steps, LoRA rank {self.lora_r}, "
            f"{self.pairs} preference pairs per job, "
            f"{self.text_kb:g} KB per constitution or text, {self.upload_mb:g} MB per upload, "
            f"{self.jobs_running} job running and {self.jobs_queued} waiting per visitor, sets of at most "
            f"{self.set_mb:g} MB and {self.set_items} items of {self.item_kb:g} KB"
        )


def limit(name: str, env=None) -> float | None:
    """The cap ``name`` in effect: its demo value in demo mode, else its local value (None: no cap locally)."""
    if enabled(env):
        return getattr(DemoCaps.from_env(env), name)
    return next(f for f in fields(DemoCaps) if f.name == name).metadata.get("local")


def limit_hint(env=None) -> str:
    """What a message about a limit of ``limit()`` adds: how to get past it."""
    return "duplicate this Space to lift the demo's limits" if enabled(env) else "split it into smaller ones"


def kb(*texts: str) -> float:
    """The size of some texts in KB, as DemoCaps.text_kb counts it (UTF-8)."""
    return round(sum(len(t.encode("utf-8", "surrogatepass")) for t in texts if t) / 1024, 1)


def enabled(env=None) -> bool:
    env = os.environ if env is None else env
    flag = env.get("CTXDISTILL_DEMO")
    if flag is not None and flag != "":
        return flag not in ("0", "false", "no")
    return bool(env.get("SPACE_ID"))


def caps(env=None) -> DemoCaps | None:
    """The caps in demo mode; None (no caps) in local mode."""
    return DemoCaps.from_env(env) if enabled(env) else None


def visitor_secret(home: str | os.PathLike) -> bytes:
    """The workspace's key for signing visitor cookies (made once, readable by its owner only)."""
    path = Path(home) / "visitor.key"
    try:
        return bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError):
        pass
    path.touch(mode=0o600)
    path.write_text(secrets.token_hex(32))
    return bytes.fromhex(path.read_text().strip())


def sign_visitor(secret: bytes, visitor: str) -> str:
    """The cookie value of a visitor id: "<id>.<HMAC-SHA256 of the id>"."""
    return f"{visitor}.{hmac.new(secret, visitor.encode(), hashlib.sha256).hexdigest()}"


def visitor_of(secret: bytes, cookies) -> str | None:
    """The visitor id in a correctly signed cookie, else None."""
    visitor, _, _ = str((cookies or {}).get(VISITOR_COOKIE, "")).rpartition(".")
    return visitor if visitor and hmac.compare_digest(sign_visitor(secret, visitor), cookies[VISITOR_COOKIE]) else None


class VisitorCookie:
    """ASGI middleware: every HTTP request reaches the app with a signed visitor cookie. A request
    without one (a first visit, a new API client, a forged or stale cookie) gets a new id, which the
    app sees at once and the response sets; gradio_client keeps it like a browser does."""

    def __init__(self, app, secret: bytes):
        self.app, self.secret = app, secret

    async def __call__(self, scope, receive, send):
        from starlette.requests import cookie_parser

        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        cookies = cookie_parser(headers.get(b"cookie", b"").decode("latin-1"))
        if visitor_of(self.secret, cookies) is not None:
            return await self.app(scope, receive, send)
        value = sign_visitor(self.secret, secrets.token_urlsafe(16))
        cookies[VISITOR_COOKIE] = value
        header = "; ".join(f"{k}={v}" for k, v in cookies.items()).encode("latin-1")
        scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k != b"cookie"] + [(b"cookie", header)]}
        https = scope.get("scheme") == "https" or headers.get(b"x-forwarded-proto", b"").startswith(b"https")
        flags = "; Secure; SameSite=None; Partitioned" if https else "; SameSite=Lax"
        set_cookie = f"{VISITOR_COOKIE}={value}; Path=/; Max-Age={VISITOR_MAX_AGE_S}; HttpOnly{flags}".encode()

        async def send_with_cookie(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", set_cookie)]}
            await send(message)

        return await self.app(scope, receive, send_with_cookie)


def duplicate_url(env=None) -> str | None:
    """The "Duplicate this Space" link of the running Space, if there is one."""
    env = os.environ if env is None else env
    space = env.get("SPACE_ID")
    return f"https://huggingface.co/spaces/{space}?duplicate=true" if space else None


def trust_remote_code(requested: bool = False, env=None) -> bool:
    """Run a model repository's own Python code only when the local user asked for it
    (``--trust-remote-code`` or CTXDISTILL_TRUST_REMOTE_CODE=1), and never in demo mode."""
    env = os.environ if env is None else env
    if enabled(env):
        return False
    return bool(requested) or env.get("CTXDISTILL_TRUST_REMOTE_CODE") == "1"


def gpu(fn=None, *, duration: int = 60):
    """``spaces.GPU`` where the ``spaces`` package is installed (ZeroGPU Spaces); elsewhere the
    function itself. Use as ``@gpu`` or ``@gpu(duration=120)``. The wrapped function's arguments
    must be picklable: ZeroGPU runs it in a forked process."""

    def wrap(f):
        try:
            import spaces
        except ImportError:
            return f
        return spaces.GPU(duration=duration)(f)

    return wrap(fn) if fn is not None else wrap
