"""Build the ``nn.Module`` named by a model spec and its keyword arguments."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from hesscli.errors import ModelSpecError
from hesscli.loading.imports import parse_spec, resolve_object

_KWARGS_FIX = "pass a JSON object, e.g. --model-kwargs '{\"hidden\": 64}'"


def parse_model_kwargs(text: str | None) -> dict[str, Any]:
    """Parse ``--model-kwargs`` (a JSON object); ``None`` or empty means no arguments."""
    if text is None or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelSpecError(
            f"--model-kwargs is not valid JSON ({exc.msg} at column {exc.colno}): {text!r}",
            _KWARGS_FIX,
        ) from exc
    if not isinstance(value, dict):
        raise ModelSpecError(
            f"--model-kwargs must be a JSON object, got {type(value).__name__}: {text!r}",
            _KWARGS_FIX,
        )
    return value


def module_names(module: ModuleType) -> list[str]:
    """Top-level names of ``module`` that are module classes, instances or plain functions."""
    names = []
    for name, value in vars(module).items():
        if name.startswith("_"):
            continue
        is_module_class = isinstance(value, type) and issubclass(value, nn.Module)
        is_local_function = inspect.isfunction(value) and value.__module__ == module.__name__
        if is_module_class or is_local_function or isinstance(value, nn.Module):
            names.append(name)
    return names


def _check_kwargs_fit(factory: Any, kwargs: dict[str, Any], label: str) -> None:
    """Reject kwargs the constructor cannot take, before running any of its code."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(**kwargs)
    except TypeError as exc:
        raise ModelSpecError(
            f"model kwargs {json.dumps(kwargs)} do not fit {label}{signature}: {exc}",
            "pass only the arguments the model takes in --model-kwargs",
        ) from exc


def build_model(spec_text: str, kwargs: dict[str, Any], *, base: Path) -> nn.Module:
    """Instantiate the model named by ``spec_text``.

    ``Name`` may be an ``nn.Module`` subclass, a function returning a module, or a module
    instance defined at the top level of the file (then ``kwargs`` must be empty).

    Args:
        spec_text: ``path/to/file.py:Name`` or ``package.module:Name``.
        kwargs: Keyword arguments for the class or factory.
        base: Directory that relative paths and module imports are resolved against.

    Returns:
        The freshly built model (weights not loaded yet).
    """
    spec = parse_spec(spec_text, base=base, what="model", error=ModelSpecError)
    obj = resolve_object(spec, base=base, what="model", error=ModelSpecError, suggest=module_names)
    label = spec.name
    if isinstance(obj, nn.Module):
        if kwargs:
            raise ModelSpecError(
                f"model {label!r} is a module instance, so model kwargs cannot apply",
                "drop --model-kwargs or point the spec at the class",
            )
        return obj
    if isinstance(obj, type) and not issubclass(obj, nn.Module):
        raise ModelSpecError(
            f"model {label!r} in {spec.target} is a class but not a torch.nn.Module",
            "name an nn.Module subclass or a function that returns one",
        )
    if not callable(obj):
        raise ModelSpecError(
            f"model {label!r} in {spec.target} is a {type(obj).__name__}, "
            "not a module class or factory",
            "name an nn.Module subclass or a function that returns one",
        )
    _check_kwargs_fit(obj, kwargs, label)
    try:
        model = obj(**kwargs)
    except Exception as exc:
        raise ModelSpecError(
            f"building model {label}(**{json.dumps(kwargs)}) failed: {type(exc).__name__}: {exc}",
            "check --model-kwargs against the model's constructor",
        ) from exc
    if not isinstance(model, nn.Module):
        raise ModelSpecError(
            f"model factory {label!r} returned a {type(model).__name__}, not a torch.nn.Module",
            "make the factory return the model",
        )
    return model
