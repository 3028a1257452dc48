"""Unpickle a PyTorch checkpoint file safely, and say plainly why a file is refused.

``torch.load`` runs with ``weights_only=True``, which refuses arbitrary classes; numpy scalars
and dtypes are let through because training loops save metrics such as ``best_acc:
np.float64``. A full pickled ``nn.Module`` is only unpickled when the caller trusts the file,
because unpickling runs arbitrary code. Kept apart from :mod:`hesscli.loading.checkpoint`, which
decides the format and unwraps what this returns, so the safety rules sit in one place.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from hesscli.errors import CheckpointError


def _unsupported_global(message: str) -> str | None:
    match = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message)
    return match.group(1) if match else None


def numpy_safe_globals() -> list[Any]:
    """The numpy globals a weights-only load may meet in a plain metric: scalars and dtypes.

    ``torch.save({"best_acc": np.float64(0.93)})`` pickles ``numpy...multiarray.scalar`` and
    ``numpy.dtype``. Both only rebuild a number from its dtype and raw bytes; an object inside
    (an ``object`` dtype scalar) is itself unpickled by the same weights-only unpickler, so
    arbitrary classes stay refused. The scalar is listed under its numpy 1 and numpy 2 module
    names, so a file written with either loads with either. Arrays are not included.

    Returns:
        Entries for ``torch.serialization.safe_globals`` (empty when numpy is absent).
    """
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        return []
    try:
        from numpy._core.multiarray import scalar  # numpy 2
    except ImportError:  # pragma: no cover - numpy 1
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    entries: list[Any] = [
        np.dtype,
        (scalar, "numpy.core.multiarray.scalar"),
        (scalar, "numpy._core.multiarray.scalar"),
    ]
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25: one class per dtype
    if dtypes is not None:
        entries += [
            getattr(dtypes, name)
            for name in sorted(dir(dtypes))
            if name.endswith("DType") and isinstance(getattr(dtypes, name), type)
        ]
    return entries


def torch_load(path: Path, *, trust_pickle: bool) -> Any:
    """``torch.load`` onto the CPU, weights-only unless ``trust_pickle``.

    Raises:
        CheckpointError: naming the pickled global a weights-only load refused, or saying the
            file is corrupt or truncated.
    """
    try:
        if trust_pickle:
            return torch.load(path, map_location="cpu", weights_only=False)
        safe = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
        if safe is None:  # pragma: no cover - older torch: numpy scalars need --trust-pickle
            return torch.load(path, map_location="cpu", weights_only=True)
        with safe(numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        culprit = _unsupported_global(str(exc))
        if culprit is not None:
            raise CheckpointError(
                f"checkpoint {path} holds pickled Python objects ({culprit}) that a safe "
                "weights-only load refuses",
                "re-save it with torch.save(model.state_dict(), path), or pass --trust-pickle "
                "if you trust the file (unpickling runs arbitrary code)",
            ) from exc
        raise CheckpointError(
            f"checkpoint {path} is not a readable PyTorch file ({exception_line(exc)})",
            "the file is corrupt or not a checkpoint; re-export it",
        ) from exc
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({exception_line(exc)})",
            "re-export or re-download it",
        ) from exc


def exception_line(exc: BaseException) -> str:
    """``TypeName: first line of the message``: an exception quoted on one line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
