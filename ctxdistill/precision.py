"""One precision policy: which weights (4-bit NF4 or not) and which compute dtype a model runs in.

    ctxdistill info            # what this machine is, what the policy picks for it and why

bf16 is the fast path only where the hardware computes it natively: CUDA GPUs since Ampere, and
CPUs with AMX or AVX512-BF16. Everywhere else it is emulated, and slow: on a 2-core AVX2 CPU one
forward of 8 x 96 tokens of the embedded model took 2.4 s in float32, 14.0 s in bf16, 12.3 s in
4-bit with bf16 compute and 2.3 s in 4-bit with float32 compute. So the policy is a function of
what the device supports (``Hardware``), never of what is fastest on the machine it was written on:

* CUDA with bf16           -> 4-bit NF4, bf16 compute
* CUDA without bf16        -> 4-bit NF4, fp16 compute, with a gradient scaler (T4, V100)
* CPU with AMX/AVX512-BF16 -> 4-bit NF4, bf16 compute
* any other CPU            -> float32 weights and compute, no 4-bit (see ``_CPU_FP32``)

``choose`` takes the user's overrides (``--quantize``, ``--precision``) and says why it chose
what it did, and for a 4-bit model under ``SMALL_MODEL`` weights what 4-bit costs it
(``_SMALL_IN_4BIT``); every loader goes through ``models.load_model``, which applies it.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import torch

QUANTIZE = ("auto", "4bit", "none")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

# oneDNN ISA names below the first one with bf16 instructions: ONEDNN_MAX_CPU_ISA set to one of
# these (as the AVX2 profile does) takes native bf16 away even on a CPU that has it.
_ONEDNN_NO_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")

# Why no 4-bit on a CPU without bf16: measured under the AVX2 profile (bench/precision.py), a
# forward of 8 x 96 tokens took 1.86 s with float32 weights and 1.96 s with 4-bit weights computing
# in float32 (bf16: 15.3 s), so 4-bit buys no speed there, only memory, which a 135M-parameter
# model does not need; full float32 weights also keep the LoRA's base exact. The default run on
# them closed 0.865 of the gap on 64 held-out prompts in 377 s (bench/distill.py --profile avx2).
# ``--quantize 4bit`` still gives 4-bit with float32 compute, for larger models on such machines.
_CPU_FP32 = "float32: this CPU has no native bf16 (no AMX or AVX512-BF16), where bf16 runs ~6x slower than float32"

# What 4-bit costs a small model (docs/distillation.md, "Precision"): the embedded model's greedy answers
# to the 130 capability items, the base 42.3 % in full bf16 against 31.5 % in 4-bit, the prompted pirate
# teacher 38.5 % against 18.5 %. The policy keeps 4-bit (QLoRA is the method; full weights closed less
# of the teacher's gap on three of the four bench constitutions, and the four default runs took as long
# on an EPYC with AVX512-BF16: 1543 s against 1535 s), and says what it costs where the model is small.
SMALL_MODEL = 1_000_000_000
_SMALL_IN_4BIT = (
    "at {size} parameters 4-bit costs the model capability, which --quantize none keeps "
    "(docs/distillation.md, Precision)"
)


@dataclass(frozen=True)
class Hardware:
    """What the policy needs to know about a device."""

    device: str = "cpu"  # "cuda" or "cpu" (mps counts as a GPU without bf16)
    gpu_name: str = ""
    gpu_bf16: bool = False  # torch.cuda.is_bf16_supported()
    gpu_memory_mb: int = 0
    cpu_capability: str = ""  # torch.backends.cpu.get_cpu_capability(): AVX512, AVX2, ...
    cpu_flags: tuple[str, ...] = ()  # the bf16-relevant flags the CPU reports: amx_bf16, avx512_bf16, bf16
    onednn_isa: str = ""  # $ONEDNN_MAX_CPU_ISA, if set
    bitsandbytes: bool = True  # 4-bit NF4 can be loaded at all

    @property
    def native_bf16(self) -> bool:
        """The device this describes computes bf16 natively."""
        return self.gpu_bf16 if self.device == "cuda" else self.cpu_bf16

    @property
    def cpu_bf16(self) -> bool:
        """The CPU computes bf16 natively, and neither ATen nor oneDNN is held below the ISA that does."""
        if self.onednn_isa.upper() in _ONEDNN_NO_BF16:
            return False
        if "bf16" in self.cpu_flags:  # aarch64's BF16 extension
            return True
        return self.cpu_capability.upper().startswith("AVX512") and bool(
            {"amx_bf16", "avx512_bf16"} & set(self.cpu_flags)
        )


@dataclass(frozen=True)
class Precision:
    """The policy's answer: how to load and run a model."""

    quantize: str  # "4bit" or "none"
    compute: str  # "bf16", "fp16" or "fp32"
    reason: str

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.compute]

    @property
    def label(self) -> str:
        return f"{'4-bit NF4' if self.quantize == '4bit' else 'full weights'}, {self.compute} compute"

    def to_dict(self) -> dict:
        return {**asdict(self), "label": self.label}


def _cpu_flags() -> tuple[str, ...]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    words = set()
    for line in text.splitlines():
        if line.lower().startswith(("flags", "features")):
            words |= set(line.split(":", 1)[1].split())
    return tuple(sorted(words & {"amx_bf16", "avx512_bf16", "bf16"}))


def _bitsandbytes() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except Exception:
        return False
    return True


@lru_cache(maxsize=8)
def detect(device: str | None = None, probe_bitsandbytes: bool = True) -> Hardware:
    """The Hardware of ``device`` ("cuda", "cpu", None = CUDA when present). Without
    ``probe_bitsandbytes`` it says no 4-bit without importing bitsandbytes (seconds: it compiles)."""
    cuda = torch.cuda.is_available() and (device in (None, "", "auto") or str(device).startswith("cuda"))
    common = dict(
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        cpu_flags=_cpu_flags(),
        onednn_isa=os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
        bitsandbytes=probe_bitsandbytes and _bitsandbytes(),
    )
    if not cuda:
        return Hardware(device="cpu", **common)
    props = torch.cuda.get_device_properties(torch.device(device if device not in (None, "", "auto") else "cuda"))
    return Hardware(
        device="cuda",
        gpu_name=props.name,
        gpu_bf16=torch.cuda.is_bf16_supported(),
        gpu_memory_mb=props.total_memory // 2**20,
        **common,
    )


def choice_errors(quantize: str, precision: str) -> list[str]:
    """What is wrong with the user's ``quantize`` and ``precision`` choices (empty when both are known):
    the one check behind every config's validation and the policy's."""
    from .safety import quote

    errors = []
    if quantize not in QUANTIZE:
        errors.append(f"quantize must be one of {', '.join(QUANTIZE)}, not {quote(quantize)}")
    if precision not in PRECISIONS:
        errors.append(f"precision must be one of {', '.join(PRECISIONS)}, not {quote(precision)}")
    return errors


def check_choices(quantize: str, precision: str) -> None:
    """ValueError naming what is wrong with the ``quantize`` and ``precision`` choices, if anything."""
    if errors := choice_errors(quantize, precision):
        raise ValueError("; ".join(errors))


def choose(hw: Hardware, quantize: str = "auto", precision: str = "auto", params: int | None = None) -> Precision:
    """The policy (module docstring), with the user's overrides; ``params``, the model's number of weights
    (None: not known), only adds to the reason. Raises ValueError on unknown choices."""
    check_choices(quantize, precision)
    if hw.device == "cuda":
        auto = (
            ("4bit", "bf16", f"{hw.gpu_name or 'this GPU'} computes bf16 natively")
            if hw.gpu_bf16
            else (
                "4bit",
                "fp16",
                f"{hw.gpu_name or 'this GPU'} has no bf16 (before Ampere): fp16 with a gradient scaler",
            )
        )
    elif hw.cpu_bf16:
        auto = ("4bit", "bf16", f"this CPU computes bf16 natively ({', '.join(hw.cpu_flags)})")
    else:
        auto = ("none", "fp32", _CPU_FP32)
    q, compute, reason = auto
    notes = []
    if quantize != "auto":
        q = quantize
        notes.append(f"--quantize {quantize}")
    if precision != "auto":
        compute = precision
        notes.append(f"--precision {precision}")
    if q == "4bit" and not hw.bitsandbytes:
        if quantize == "4bit":
            raise ValueError(
                "4-bit needs bitsandbytes, which cannot be imported here: pip install bitsandbytes, "
                "or use --quantize none"
            )
        q, reason = "none", "bitsandbytes cannot be imported here, so no 4-bit; " + reason
    if notes:
        own = f"{'4-bit' if auto[0] == '4bit' else 'full weights'}, {auto[1]}: {auto[2]}"
        reason = f"chosen by {' and '.join(notes)} (the policy's own pick: {own})"
    if q == "4bit" and params is not None and params < SMALL_MODEL:
        reason = f"{reason}; {_SMALL_IN_4BIT.format(size=_size(params))}"
    return Precision(q, compute, reason)


def policy(
    device: str | None = None, quantize: str = "auto", precision: str = "auto", params: int | None = None
) -> Precision:
    """``choose`` for the device this process runs on (a full-weights load never asks for bitsandbytes)."""
    return choose(detect(device, probe_bitsandbytes=quantize != "none"), quantize, precision, params)


def _size(params: int) -> str:
    return f"{params / 1e9:.1f}B" if params >= 999_500_000 else f"{params / 1e6:.0f}M"


def facts(params: int | None = None) -> dict:
    """Machine facts for ``ctxdistill info`` and the app's panel (no model loaded), the policy's pick for a
    model of ``params`` weights."""
    import importlib.metadata as md

    hw = detect()
    versions = {}
    for name in ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "gradio"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    return {
        "device": hw.device,
        "gpu": hw.gpu_name or None,
        "gpu_memory_mb": hw.gpu_memory_mb or None,
        "gpu_bf16": hw.gpu_bf16 if hw.device == "cuda" else None,
        "cpu": platform.processor() or platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_capability": hw.cpu_capability,
        "cpu_bf16_flags": list(hw.cpu_flags),
        "onednn_max_isa": hw.onednn_isa or None,
        "aten_cpu_capability": os.environ.get("ATEN_CPU_CAPABILITY") or None,
        "native_bf16": hw.native_bf16,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": versions,
        "precision": policy(params=params).to_dict(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def profile_line() -> str:
    """One line for bench output: the CPU capability and the precision the policy runs with."""
    hw, p = detect(), policy()
    isa = f"ATen {hw.cpu_capability}" + (f", oneDNN max {hw.onednn_isa}" if hw.onednn_isa else "")
    device = f"device {hw.device}{' ' + hw.gpu_name if hw.gpu_name else ''}"
    return f"{device} · CPU {isa} · native bf16 {'yes' if hw.native_bf16 else 'no'} · policy: {p.label}"
