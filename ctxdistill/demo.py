"""Demo mode: what changes when the app runs as a public Hugging Face Space.

Spaces set ``SPACE_ID``; ``CTXDISTILL_DEMO=1`` turns the same mode on anywhere (``=0`` off).
In demo mode every visitor gets their own rows in the one workspace (the store's ``owner``),
the work one visitor can ask for is capped (``DemoCaps``, the one table of caps that every callback
and API endpoint checks: each cap overridable by an environment variable, e.g.
``CTXDISTILL_DEMO_STEPS=200`` on a duplicated Space with a GPU),
``trust_remote_code`` is never honoured, and model-heavy calls are wrapped for ZeroGPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

ENV_PREFIX = "CTXDISTILL_DEMO_"


class DemoLimit(ValueError):
    """A request above a demo cap; the message names the cap and how to lift it."""


@dataclass(frozen=True)
class DemoCaps:
    """What one demo visitor may ask for at a time. Env: CTXDISTILL_DEMO_<NAME upper-cased>."""

    prompts: int = 48           # prompts per imported set, and per sampling, training or evaluation job
    steps: int = 40             # training steps per run
    samples: int = 2            # samples per prompt (preview and sampling)
    rounds: int = 2             # critique/revision rounds per sample
    max_new_tokens: int = 64    # new tokens per answer
    batch_size: int = 8         # answers per training micro-batch, prompts per sampling batch
    grad_accum: int = 4         # micro-batches per training step
    lora_r: int = 32            # LoRA rank
    text_kb: float = 64.0       # one constitution or draft, prompt, note or edited answer, as stored
    upload_mb: float = 2.0      # size of one uploaded file

    def __post_init__(self):
        bad = [f"{ENV_PREFIX}{f.name.upper()}={getattr(self, f.name)}" for f in fields(self)
               if not getattr(self, f.name) > 0]
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
        over = [f"{name.replace('_', ' ')} {value} > {getattr(self, name)}"
                for name, value in values.items() if value is not None and value > getattr(self, name)]
        if over:
            raise DemoLimit("Above the demo limits (" + "; ".join(over) + "). Duplicate this Space to run "
                            "longer jobs on your own hardware.")

    def summary(self) -> str:
        return (f"at most {self.prompts} prompts per set or job, {self.steps} training steps, "
                f"{self.samples} samples per prompt, {self.rounds} revision rounds, {self.max_new_tokens} new tokens per answer, "
                f"batches of {self.batch_size}, {self.grad_accum} accumulation steps, LoRA rank {self.lora_r}, "
                f"{self.text_kb:g} KB per constitution or text, {self.upload_mb:g} MB per upload")


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
