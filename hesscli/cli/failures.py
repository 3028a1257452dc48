"""What the error boundary says when the user's own code fails.

hesscli runs user code in many places: the model file at import, the model factory, the
model's forward on every micro-batch (inside torch transforms, inside the exact-diagonal
capture, on every rank), the data factory, a custom loss. Failures at import and in the
factories are caught where they happen (``loading``). A failure in a forward or in a custom
loss surfaces deep inside the engine, which passes the exception through unchanged (it must:
its fallbacks and out-of-memory retries depend on the original type). This module reads the
exception's traceback at the boundary to tell the two kinds of escaped exception apart:

- the innermost frames are the user's code (a ``nn.Module`` call, or a file or module hesscli
  imported for the user) with no hesscli frame below them: the user's code failed → one line
  naming which code, what it raised, the stage of the run and the micro-batch, exit 2;
- anything else is a hesscli bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import os
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType

import torch.nn.modules.module as torch_module

import hesscli
from hesscli.runs.session import current_micro_batch, user_code_role

_HESSCLI = Path(hesscli.__file__).resolve().parent
_MODULE_CALL = Path(torch_module.__file__).resolve()
_TORCH = _MODULE_CALL.parents[2]  # .../site-packages/torch
#: ``nn.Module.__call__``'s frames: what runs below them is a model's forward.
_CALL_FUNCTIONS = frozenset({"_call_impl", "_wrapped_call_impl"})

#: The stage of a run in the engine, from the *outermost* of these modules on the stack (the
#: operator's route check and memory measurement are part of its products).
_ENGINE_STAGES = {
    "hesscli.engine.diagonal": "the exact diagonal",
    "hesscli.engine.gradient": "the gradient",
    "hesscli.engine.routes": "the differentiation-route check",
    "hesscli.engine.route_check": "the differentiation-route check",
    "hesscli.engine.memory": "the memory measurement",
    "hesscli.engine.output_curvature": "the output-space curvature",
    "hesscli.engine.operator": "the curvature products",
}
#: The stage while loading, from the *innermost* of these modules (the most specific).
_LOADING_STAGES = {
    "hesscli.loading.problem": "loading (the first samples through the model)",
    "hesscli.loading.model_spec": "loading (building the model)",
    "hesscli.loading.checkpoint": "loading (reading the checkpoint)",
    "hesscli.loading.torch_pickle": "loading (reading the checkpoint)",
    "hesscli.loading.keys": "loading (reading the checkpoint)",
    "hesscli.loading.hf_weights": "loading (reading the checkpoint)",
    "hesscli.loading.data": "loading (reading the data)",
    # apply_model, which loading's probes call the forward through, moved here from data
    "hesscli.batches": "loading (reading the data)",
    "hesscli.loading.losses": "loading (the loss on the first samples)",
}


@dataclass(frozen=True)
class _Frame:
    """One traceback entry, classified."""

    kind: str  # "hesscli", "user" or "other"
    role: str  # for user frames: "forward", "model", "loss", "data factory"...
    module: str
    frame: FrameType
    line: int


@functools.lru_cache(maxsize=4096)
def _resolved(filename: str) -> Path | None:
    try:
        return Path(filename).resolve()
    except (OSError, RuntimeError, ValueError):
        return None


def _classify(frame: FrameType, line: int) -> _Frame:
    code = frame.f_code
    module = str(frame.f_globals.get("__name__", ""))
    path = _resolved(code.co_filename)
    if path is not None and path.is_relative_to(_HESSCLI):
        return _Frame("hesscli", "", module, frame, line)
    if path == _MODULE_CALL and code.co_name in _CALL_FUNCTIONS:
        return _Frame("user", "forward", module, frame, line)
    role = user_code_role(code.co_filename, module, code)
    if role is not None:
        return _Frame("user", role, module, frame, line)
    return _Frame("other", "", module, frame, line)


def _frames(tb: TracebackType | None) -> list[_Frame]:
    return [_classify(frame, line) for frame, line in traceback.walk_tb(tb)]


def _who(frames: list[_Frame]) -> str:
    """Which user code failed: the outermost user frame's role."""
    role = next(f.role for f in frames if f.kind == "user")
    if role == "forward":
        return "the model's forward"
    if role == "model":
        return "the model's code"
    return f"the {role}"


def _where(frames: list[_Frame]) -> str:
    """``file:line in function`` of the innermost frame outside torch and hesscli."""
    start = next(i for i, f in enumerate(frames) if f.kind == "user")
    own = [f for f in frames[start:] if f.role != "forward" and not _in_torch(f)]
    if not own:
        return ""
    code = own[-1].frame.f_code
    function = getattr(code, "co_qualname", code.co_name)  # co_qualname: Python 3.11+
    return f" at {Path(code.co_filename).name}:{own[-1].line} in {function}"


def _in_torch(frame: _Frame) -> bool:
    path = _resolved(frame.frame.f_code.co_filename)
    return path is None or path.is_relative_to(_TORCH)


def _stage(frames: list[_Frame]) -> tuple[str, bool]:
    """The stage of the run, and whether it is an engine stage (with micro-batches)."""
    start = next(i for i, f in enumerate(frames) if f.kind == "user")
    modules = [f.module for f in frames[:start] if f.kind == "hesscli"]
    engine = [_ENGINE_STAGES[m] for m in modules if m in _ENGINE_STAGES]
    if engine:
        return engine[0], True
    loading = [_LOADING_STAGES[m] for m in modules if m in _LOADING_STAGES]
    if loading:
        return loading[-1], False
    if any(m.startswith("hesscli.engine.") for m in modules):
        return "the curvature computation", True
    return "the run", False


def _what(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"called sys.exit({exc.code!r})"
    text = " ".join(str(exc).split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"raised {type(exc).__name__}: {text}" if text else f"raised {type(exc).__name__}"


def _micro_batch() -> str:
    position = current_micro_batch()
    if position is None:
        return ""
    samples = f"samples {position.first}-{position.stop - 1}"
    shard = " of this rank's shard" if "RANK" in os.environ else ""
    return f" on micro-batch {position.index} of {position.count} ({samples}{shard})"


def _user_failure(exc: BaseException) -> list[_Frame] | None:
    """The classified frames when ``exc`` was raised in user code, else ``None``."""
    frames = _frames(exc.__traceback__)
    first_user = next((i for i, f in enumerate(frames) if f.kind == "user"), None)
    if first_user is None:
        return None
    if any(f.kind == "hesscli" for f in frames[first_user:]):
        return None  # hesscli code called from the model (a hook): a hesscli bug
    return frames


def user_code_failure(exc: BaseException) -> str | None:
    """One line describing a failure in the user's code, or ``None`` for anything else.

    Follows explicit causes (``raise ... from``): an exception that hesscli re-raised from the
    user's is described by the user's.

    Args:
        exc: An exception that escaped a command and is not a ``HesscliError``.

    Returns:
        ``problem; fix`` as one line, or ``None`` when the exception did not come from the
        user's code (a hesscli bug, which keeps its traceback).
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        frames = _user_failure(current)
        if frames is not None:
            stage, engine = _stage(frames)
            where = _micro_batch() if engine else ""
            fix = "fix that code (or check those samples)" if where else "fix that code"
            return (
                f"{_who(frames)} {_what(current)}{_where(frames)}, during {stage}{where}; "
                f"{fix} and run again"
            )
        current = current.__cause__
    return None
