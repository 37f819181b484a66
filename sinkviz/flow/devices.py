"""Which device and dtype a model runs on: CUDA, then Apple MPS, then CPU."""

import torch

from sinkviz.errors import BadSetting

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}


def available_devices() -> list[str]:
    """Devices this machine can run on, best first."""
    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return found + ["cpu"]


def pick_device(override: str | None = None) -> str:
    """The best available device, or ``override`` after checking it exists here."""
    if override in (None, "", "auto"):
        return available_devices()[0]
    kind, _, index = override.partition(":")
    count = torch.cuda.device_count() if kind == "cuda" else 1
    if kind not in available_devices() or (index and not (index.isascii() and index.isdigit()
                                                          and int(index) < count)):
        raise BadSetting(f"device {override!r} is not available here "
                         f"(available: {', '.join(available_devices())})")
    return override


def pick_dtype(device: str, override: str | None = None) -> torch.dtype:
    """float32 on CPU and MPS; bfloat16 on CUDA where supported; or ``override``."""
    if override not in (None, "", "auto"):
        if override not in DTYPES:
            raise BadSetting(f"dtype {override!r} is not one of {', '.join(DTYPES)}")
        return DTYPES[override]
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
