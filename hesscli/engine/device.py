"""Resolve ``--device`` and ``--dtype`` to torch objects, failing clearly when unavailable.

Also the one place that waits for a device (:func:`synchronize`): CUDA runs asynchronously,
so a timer read without it measures the queueing of kernels, not their work.
"""

from __future__ import annotations

import torch

from hesscli.errors import DeviceError

DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: Half-precision spellings refused, with why (float32 is hesscli's least precision).
HALF = {
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "half": "float16",
    "fp16": "float16",
}
#: Why half precision is refused, in one clause.
HALF_REASON = (
    "it keeps about 2 (bfloat16) or 3 (float16) significant digits, so Lanczos loses orthogonality "
    "within a few steps, eigenvalues and traces below about 1e-2 of the largest are rounding "
    "noise, and the route and symmetry checks cannot tell a wrong product from round-off"
)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then MPS, then the CPU; explicit names are checked to exist."""
    text = name.strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(text)
    except RuntimeError as exc:
        raise DeviceError(f"unknown device {name!r}", "use auto, cpu, cuda, cuda:N or mps") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("CUDA is not available on this machine", "use --device cpu or auto")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceError(
                f"device {name} does not exist: this machine has {count} CUDA device(s)",
                f"use cuda:0 to cuda:{count - 1}",
            )
    elif device.type == "mps" and not _mps_available():
        raise DeviceError("MPS is not available on this machine", "use --device cpu or auto")
    elif device.type not in {"cpu", "cuda", "mps"}:
        raise DeviceError(f"unsupported device {name!r}", "use auto, cpu, cuda, cuda:N or mps")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``float32`` or ``float64`` (MPS has no float64); half precision is refused with why."""
    key = name.strip().lower()
    if key in HALF:
        raise DeviceError(
            f"--dtype {HALF[key]} is not supported: {HALF_REASON}",
            "use --dtype float32 (the default; true float32 on GPUs, TF32 off) or float64",
        )
    if key not in DTYPES:
        raise DeviceError(f"unsupported dtype {name!r}", f"use one of {', '.join(DTYPES)}")
    if key == "float64" and device.type == "mps":
        raise DeviceError("MPS does not support float64", "use --dtype float32 or --device cpu")
    return DTYPES[key]


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def synchronize(device: torch.device) -> None:
    """Wait until ``device`` has finished its queued work (nothing to wait for on the CPU).

    Call it before reading a timer: CUDA kernels run asynchronously, so without it a
    measurement ends when the work is queued, not when it is done.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
