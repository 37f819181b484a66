"""Load a model for capture: the embedded default, a local folder, or a Hugging Face id.

Weights load from safetensors or GGUF only (never pickle), ``trust_remote_code`` stays off
unless the caller turns it on, and downloads happen only with SINKVIZ_ALLOW_DOWNLOADS=1.
"""

import hashlib
import json
import os
import threading
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sinkviz.engine import capture

from sinkviz.flow import embedded
from sinkviz.flow.devices import dtype_name, pick_device, pick_dtype
from sinkviz.errors import AttentionOutsideInterface, ModelNotFound, SinkvizError, UnsupportedArchitecture

WEIGHT_SUFFIXES = (".safetensors", ".gguf")
MAX_LOADED = 2  # models kept in memory; the least recently used one is dropped
_PACKAGE = str(Path(__file__).resolve().parent.parent)  # sinkviz/


@dataclass(frozen=True)
class ModelInfo:
    model_id: str
    label: str
    architecture: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    max_context: int | None
    bos_token: str | None
    has_chat_template: bool
    sliding_window: int | None
    device: str
    dtype: str
    fingerprint: str   # sha256 over the weight files (see ``weights_fingerprint``)
    revision: str | None
    eager_attention: bool = False  # attention taken from the model's own output_attentions (eager_path)


@dataclass(frozen=True, eq=False)
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    info: ModelInfo
    lock: threading.Lock = field(default_factory=threading.Lock)  # one forward pass at a time


def allowlist() -> list[str]:
    """The operator's SINKVIZ_ALLOWED_MODELS (comma-separated ids or folders), [] when unset."""
    return [a.strip() for a in os.environ.get("SINKVIZ_ALLOWED_MODELS", "").split(",") if a.strip()]


def offered_models() -> list[str]:
    """What a dashboard served to others may load: the embedded models and the allowlist."""
    return list(embedded.EMBEDDED) + [m for m in allowlist() if m not in embedded.EMBEDDED]


def check_allowed(spec: str, shared: bool = False) -> None:
    """Refuse models outside SINKVIZ_ALLOWED_MODELS (unset = any model). ``shared`` (or
    SINKVIZ_SHARED=1): only ``offered_models()``, refused before any path is looked at."""
    if shared or os.environ.get("SINKVIZ_SHARED") == "1":
        if spec.strip() not in offered_models():
            raise ModelNotFound(f"model {spec.strip()[:200]!r} is not offered by this server "
                                f"(it offers {', '.join(offered_models())})")
        return
    allowed = allowlist()
    if allowed and spec.strip() not in allowed:
        raise ModelNotFound(f"model {spec.strip()!r} is not in this server's allowlist")


def resolve(spec: str) -> tuple[Path, str, str | None]:
    """(local folder, label, revision) for an embedded name, a folder, or a hub id."""
    check_allowed(spec)
    spec = spec.strip()
    if not spec:
        raise ModelNotFound("the model name is empty")
    if spec in embedded.EMBEDDED:
        return embedded.ensure_converted(spec), embedded.EMBEDDED[spec].label, None
    path = Path(spec).expanduser()
    if path.is_dir():
        return path, str(path), None
    if path.suffix or spec.startswith((".", "/", "~")):
        raise ModelNotFound(f"no model folder at {spec}")
    return _hub_snapshot(spec)


def _hub_snapshot(repo_id: str) -> tuple[Path, str, str | None]:
    from huggingface_hub import snapshot_download
    allow = os.environ.get("SINKVIZ_ALLOW_DOWNLOADS") == "1"
    try:
        folder = snapshot_download(repo_id, local_files_only=not allow, allow_patterns=[
            "*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.gguf"])
    except Exception as err:  # hub errors have many classes; all mean "not available"
        where = "locally or on the hub" if allow else \
            "in the local Hugging Face cache (downloads are off; set SINKVIZ_ALLOW_DOWNLOADS=1 to allow them)"
        raise ModelNotFound(f"model {repo_id!r} was not found {where}: "
                            f"{type(err).__name__}") from None
    return Path(folder), repo_id, Path(folder).name


def weights_fingerprint(folder: Path) -> str:
    """sha256 over each weight file's name, size, first and last MiB, plus config.json."""
    digest = hashlib.sha256()
    for f in sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES + (".json",)):
        digest.update(f"{f.name}:{f.stat().st_size}".encode())
        with open(f, "rb") as fh:
            digest.update(fh.read(1 << 20))
            fh.seek(max(0, f.stat().st_size - (1 << 20)))
            digest.update(fh.read(1 << 20))
    return digest.hexdigest()[:16]


def fingerprint(folder: Path) -> str:
    """The embedded model's GGUF sha256, else ``weights_fingerprint`` of the folder."""
    marker = folder / embedded.MARKER
    if marker.exists():
        return json.loads(marker.read_text())["gguf_sha256"][:16]
    return weights_fingerprint(folder)


def identity(spec: str, device: str | None = None, dtype: str | None = None) -> dict:
    """What identifies a model's numbers, without loading it: id, weights, revision, device, dtype."""
    folder, _, revision = resolve(spec)
    device = pick_device(device)
    return {"model_id": spec.strip(), "fingerprint": fingerprint(folder), "revision": revision,
            "device": device.split(":")[0], "dtype": dtype_name(pick_dtype(device, dtype))}


def load_model(spec: str, device: str | None = None, dtype: str | None = None,
               trust_remote_code: bool = False) -> LoadedModel:
    """Load ``spec`` onto ``device`` (auto: CUDA, MPS, CPU) with the sinkviz attention."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    capture.register()
    folder, label, revision = resolve(spec)
    files = sorted(p.name for p in folder.iterdir())
    weights = weight_source(spec, files)
    device = pick_device(device)
    torch_dtype = pick_dtype(device, dtype)
    source = weights if "gguf_file" in weights and "config.json" not in files else {}
    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code, **source)
    except (ValueError, KeyError, OSError) as err:
        if "custom code" in str(err) or "trust_remote_code" in str(err):
            raise UnsupportedArchitecture(f"{spec} needs its own Python code to load; sinkviz runs it only "
                                          "if the operator sets SINKVIZ_TRUST_REMOTE_CODE=1") from None
        raise UnsupportedArchitecture(f"{spec}: transformers cannot read this model's config "
                                      f"({_first_line(err)})") from None
    auto = AutoModelForCausalLM if _is_causal_lm(config) else _named_causal_lm(config) or AutoModel
    kwargs = dict(dtype=torch_dtype, attn_implementation=_attention_name(auto, config),
                  trust_remote_code=trust_remote_code, **weights, **_experts_kwargs(torch_dtype))
    if device == "cuda" and torch.cuda.device_count() > 1:
        kwargs["device_map"] = "auto"  # spread a large model over this host's GPUs
    model = _captured_model(spec, auto, folder, config, kwargs, device, torch_dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code,
                                                  **source)
    except (ValueError, OSError, TypeError) as err:
        raise ModelNotFound(f"{spec}: no usable tokenizer ({_first_line(err)})") from None
    return LoadedModel(model, tokenizer, _info(spec, label, revision, folder, model, tokenizer,
                                                device, torch_dtype))


def _captured_model(spec, auto, folder, config, kwargs, device, dtype) -> torch.nn.Module:
    """The model, loaded and probed: through the attention interface, else (its attention is its
    own) through its eager ``output_attentions`` path; see ``eager_path``."""
    try:
        return _placed(_load_weights(spec, auto, folder, config, kwargs), kwargs, device, dtype)
    except AttentionOutsideInterface as err:
        outside = err
    try:
        return _placed(_load_weights(spec, auto, folder, config, {**kwargs, "attn_implementation": "eager"}),
                       kwargs, device, dtype)
    except UnsupportedArchitecture as err:  # neither path: say both
        raise UnsupportedArchitecture(f"{outside}; its eager path cannot serve either: {err}") from None


def _placed(model, kwargs, device, dtype) -> torch.nn.Module:
    if "device_map" not in kwargs:
        model.to(device)
    model.eval()
    _probe(model, dtype)
    return model


def _probe(model, dtype) -> None:
    """A 2-token capture, so an unsupported model fails at load with its cause. An error raised
    inside the model's own code (not sinkviz's) means it cannot run like this at all, unless
    loading left weights in another dtype than ``dtype`` (XLNet makes its attention weights as
    torch.FloatTensor, whatever dtype is asked): then those are cast to ``dtype`` and it runs again."""
    try:
        _probe_capture(model, dtype)
    except _OwnCodeFails:
        if not cast_stray_weights(model, dtype):
            raise
        _probe_capture(model, dtype)


class _OwnCodeFails(UnsupportedArchitecture):
    """The model's own code raised during the probe."""


def _probe_capture(model, dtype) -> None:
    try:
        capture.capture(model, torch.tensor([[0, 0]], device=model.device))
    except Exception as err:
        frames = traceback.extract_tb(err.__traceback__)
        if isinstance(err, SinkvizError) or not frames or frames[-1].filename.startswith(_PACKAGE):
            raise
        raise _OwnCodeFails(f"{type(model).__name__} fails in its own code in {dtype_name(dtype)} "
                            f"on {model.device.type} ({_first_line(err)})") from err


def cast_stray_weights(model, dtype: torch.dtype) -> list[str]:
    """Cast to ``dtype`` the floating-point parameters loading left in another dtype, except in
    the modules the model keeps in float32 on purpose (``_keep_in_fp32_modules``); their names."""
    keep = [*(getattr(model, "_keep_in_fp32_modules", None) or ()),
            *(getattr(model, "_keep_in_fp32_modules_strict", None) or ())]
    stray = [(name, p) for name, p in model.named_parameters()
             if p.is_floating_point() and p.dtype != dtype and not any(k in name for k in keep)]
    for _, p in stray:
        p.data = p.data.to(dtype)
    return [name for name, _ in stray]


def weight_source(spec: str, files: list[str]) -> dict:
    """from_pretrained arguments that load only the safetensors or GGUF weights the folder
    holds (``use_safetensors``: transformers then never falls back to a pickle), else refuse."""
    if "model.safetensors" in files or "model.safetensors.index.json" in files:
        return {"use_safetensors": True}
    gguf = [f for f in files if f.endswith(".gguf")]
    if gguf:
        return {"gguf_file": gguf[0]}
    pickled = " (pickle weights are never loaded)" if any(
        f.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl")) for f in files) else ""
    other = [f for f in files if f.endswith(".safetensors")]
    if other:
        raise ModelNotFound(f"{spec}: {', '.join(other[:3])} is not a checkpoint transformers loads "
                            f"(model.safetensors or model.safetensors.index.json){pickled}")
    raise ModelNotFound(f"{spec}: no safetensors or GGUF weights{pickled}")


def _named_causal_lm(config):
    """The causal-LM class a checkpoint names in ``architectures`` where the auto mapping has no
    entry for its config (a multimodal model's text part saved alone: emu3_text, mllama_text)."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    known = {n for v in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values() for n in ((v,) if isinstance(v, str) else v)}
    for name in config.architectures or ():
        if name in known and hasattr(transformers, name):
            return getattr(transformers, name)
    return None


def _is_causal_lm(config) -> bool:
    """True when the checkpoint is a causal LM (its saved architecture, if any, is the LM class)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    names = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.model_type)
    if not names:
        return False
    names = {names} if isinstance(names, str) else set(names)
    return not config.architectures or bool(names & set(config.architectures))


def _experts_kwargs(dtype: torch.dtype) -> dict:
    """Mixture-of-experts layers run their experts one by one in float64: the default grouped
    matmul has no float64 kernel (same numbers, looped)."""
    return {"experts_implementation": "eager"} if dtype == torch.float64 else {}


def _attention_name(auto, config) -> str:
    """sinkviz's attention; for a model transformers never runs with SDPA (``_supports_sdpa``
    off), the variant whose masks are materialized as eager's are, so no layer falls back on an
    ``is_causal`` attribute that eager ignores (BigBirdPegasus's decoder says False and is causal
    by its mask; MPT needs the mask itself)."""
    from transformers.models.auto.auto_factory import _get_model_class
    try:
        model_class = _get_model_class(config, auto._model_mapping) if hasattr(auto, "_model_mapping") else auto
    except (KeyError, ValueError, AttributeError):  # unknown here; from_pretrained will say why
        return capture.ATTN_NAME
    return capture.ATTN_NAME if getattr(model_class, "_supports_sdpa", True) else capture.ATTN_FULL_MASK


def _no_heads_reason(config) -> str:
    """Why a config without ``num_attention_heads`` is refused: attention kept in nested sub-models
    (BLT's patcher, encoder, global transformer, decoder) or under other names (Perceiver's self-
    and cross-attention heads), or no softmax attention at all (Mamba, RWKV, xLSTM, FNet)."""
    from transformers import PretrainedConfig
    nested = [name for name, value in vars(config).items()
              if isinstance(value, PretrainedConfig) and config_value(value, "num_attention_heads")]
    named = [name for name in config.to_dict() if "attention_heads" in name]
    if nested:
        return (f"{config.model_type} keeps its attention in {len(nested)} nested sub-models ({', '.join(nested)}); "
                "sinkviz captures one stack of attention layers over the prompt's tokens")
    if named:
        return (f"{config.model_type}'s attention is not one stack of self-attention layers over the prompt's "
                f"tokens ({', '.join(named)}); sinkviz cannot map it onto the tokens")
    return f"{config.model_type} has no attention heads to inspect (it mixes tokens without softmax attention)"


def _load_weights(spec, auto, folder, config, kwargs) -> torch.nn.Module:
    """from_pretrained with every failure turned into one clear sentence."""
    if config_value(config.get_text_config(), "num_attention_heads") is None:
        raise UnsupportedArchitecture(_no_heads_reason(config))
    try:
        model, loading = auto.from_pretrained(folder, output_loading_info=True, **kwargs)
    except (ValueError, OSError, TypeError, KeyError, AttributeError) as err:
        if isinstance(err, KeyError) and err.args[:1] in ((capture.ATTN_NAME,), (capture.ATTN_FULL_MASK,)):
            raise AttentionOutsideInterface(
                f"{config.model_type}: its attention classes come from its own table (eager, SDPA, ...), "
                "not transformers' AttentionInterface, so sinkviz cannot capture them") from None
        if "attention" in str(err).lower():
            raise AttentionOutsideInterface(
                f"{config.model_type}: its attention does not go through transformers' "
                "AttentionInterface, so sinkviz cannot capture it") from None
        raise ModelNotFound(f"{spec}: transformers could not load it ({_first_line(err)})") from None
    missing = [k for k in loading.get("missing_keys") or () if not k.startswith("pooler.")]
    if missing:  # a masked-LM checkpoint has no pooler; it never touches attention or hidden states
        raise ModelNotFound(f"{spec}: the weights lack {len(missing)} tensors "
                            f"(e.g. {sorted(missing)[0]}); refusing random weights")
    return model


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def config_value(config, name: str):
    """config.name, or None where absent. Where a config keeps the value per layer (reading it
    globally raises), the largest of the layers' values that are set."""
    try:
        return getattr(config, name, None)
    except RuntimeError:  # transformers' AmbiguousGlobalPerLayerAttributeError
        values = [getattr(layer, name, None) for layer in config.per_layer_config]
        return max((v for v in values if v is not None), default=None)


def _info(spec, label, revision, folder, model, tokenizer, device, dtype) -> ModelInfo:
    text = model.config.get_text_config()
    heads = text.num_attention_heads
    return ModelInfo(
        model_id=spec, label=label, architecture=type(model).__name__,
        n_layers=text.num_hidden_layers, n_heads=heads,
        n_kv_heads=config_value(text, "num_key_value_heads") or heads,
        head_dim=config_value(text, "head_dim") or text.hidden_size // heads,
        max_context=config_value(text, "max_position_embeddings"),
        bos_token=tokenizer.bos_token, has_chat_template=bool(tokenizer.chat_template),
        sliding_window=config_value(text, "sliding_window"),
        device=device, dtype=dtype_name(dtype), fingerprint=fingerprint(folder), revision=revision,
        eager_attention=capture.eager_path.is_eager(model))


_loaded: "OrderedDict[tuple, LoadedModel]" = OrderedDict()
_loaded_lock = threading.Lock()


def get_model(spec: str, device: str | None = None, dtype: str | None = None,
              trust_remote_code: bool | None = None) -> LoadedModel:
    """``load_model`` memoised per process (thread-safe, at most MAX_LOADED kept). A failed
    load keeps the models already loaded. ``trust_remote_code`` defaults to the operator's
    SINKVIZ_TRUST_REMOTE_CODE=1, else off."""
    if trust_remote_code is None:
        trust_remote_code = os.environ.get("SINKVIZ_TRUST_REMOTE_CODE") == "1"
    key = (spec.strip(), pick_device(device), dtype or "auto", trust_remote_code)
    with _loaded_lock:
        if key in _loaded:
            _loaded.move_to_end(key)
            return _loaded[key]
        loaded = load_model(*key)
        _loaded[key] = loaded
        while len(_loaded) > MAX_LOADED:
            _loaded.popitem(last=False)
        return loaded
