"""Defaults from a project config and from checkpoint metadata, with where each value came from.

Precedence, highest first: command-line option > checkpoint metadata (a ``.safetensors`` written
by ``hesscli convert``) > project config (``hesscli.toml``, or ``[tool.hesscli]`` in
``pyproject.toml``, the first found from the current directory upward) > built-in default.
Relative paths resolve against the directory of the file that named them.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hesscli.errors import CheckpointError, ConfigError
from hesscli.loading.checkpoint import read_metadata, sniff_format
from hesscli.loading.imports import ObjectSpec, closest, looks_like_spec, parse_spec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

#: Settings a config file or checkpoint metadata may provide, with their Python types.
SETTING_TYPES: dict[str, type | tuple[type, ...]] = {
    "checkpoint": str,
    "model": str,
    "model_kwargs": dict,
    "data": str,
    "loss": str,
    "output_key": str,
    "text_field": str,
    "label_field": str,
    "max_length": int,
    "max_samples": int,
    "micro_batch": int,
    "device": str,
    "dtype": str,
    "seed": int,
    "curvature": str,
    "hvp_method": str,
    "allow_tf32": bool,
    "train_mode": bool,
    "distributed": bool,
    "max_memory": (str, int),
    "normalisation": str,
    "strict": bool,
    "checkpoint_prefix": str,
}
#: Settings whose value may name code; metadata may only name ``.py`` files in its folder.
CODE_SETTINGS = ("model", "data", "loss")

OPTION = "option"
METADATA = "checkpoint metadata"
DEFAULT = "default"


@dataclass(frozen=True)
class Sourced:
    """A setting's value, where it came from, and the directory its relative paths resolve in."""

    value: Any
    source: str
    base: Path


@dataclass(frozen=True)
class ConfigFile:
    """A project config: its path and its ``hesscli`` table."""

    path: Path
    values: dict[str, Any]


def _validate(values: Mapping[str, Any], *, where: str, error: type[ConfigError]) -> dict:
    checked = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in SETTING_TYPES:
            near = closest(name, list(SETTING_TYPES))
            hint = f"did you mean {near[0]!r}?" if near else f"known: {', '.join(SETTING_TYPES)}"
            raise error(f"{where}: unknown setting {key!r}", hint)
        expected = SETTING_TYPES[name]
        if (isinstance(value, bool) and expected is not bool) or not isinstance(value, expected):
            raise error(
                f"{where}: setting {key!r} should be a {_type_name(expected)}, "
                f"got {type(value).__name__} {value!r}",
                "fix the value",
            )
        checked[name] = value
    return checked


def _type_name(expected: type | tuple[type, ...]) -> str:
    names = {str: "string", int: "integer", bool: "boolean", dict: "table"}
    if isinstance(expected, tuple):
        return " or ".join(names.get(t, t.__name__) for t in expected)
    return names.get(expected, expected.__name__)


def read_config(path: Path) -> ConfigFile | None:
    """Read ``hesscli.toml`` (whole file) or ``pyproject.toml`` (``[tool.hesscli]``).

    Returns:
        The config, or ``None`` for a ``pyproject.toml`` without a ``[tool.hesscli]`` table.
    """
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}", "fix its syntax") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}", "check it") from exc
    if path.name == "pyproject.toml":
        table = document.get("tool", {}).get("hesscli")
        if table is None:
            return None
        where = f"{path} [tool.hesscli]"
    else:
        table, where = document.get("hesscli", document), str(path)
    if not isinstance(table, dict):
        raise ConfigError(f"{where} is not a table", "write key = value settings")
    return ConfigFile(path, _validate(table, where=where, error=ConfigError))


def find_config(start: Path) -> ConfigFile | None:
    """The first ``hesscli.toml``, or ``pyproject.toml`` with ``[tool.hesscli]``, upward."""
    for directory in (start, *start.parents):
        for name in ("hesscli.toml", "pyproject.toml"):
            candidate = directory / name
            if candidate.is_file():
                config = read_config(candidate)
                if config is not None:
                    return config
    return None


def checkpoint_defaults(path: Path) -> dict[str, Any]:
    """Validated hesscli metadata of a ``.safetensors`` checkpoint; empty for other files.

    Metadata travels with files from elsewhere, so a setting that names code (model, data
    factory, custom loss) must name a ``.py`` file inside the checkpoint's own folder: the code
    that ships with the checkpoint. It may not name an installed module or a file elsewhere (an
    absolute path to ``subprocess.py`` would otherwise let a checkpoint run any command).
    """
    if not path.is_file() or sniff_format(path) != "safetensors":
        return {}
    values = _validate(read_metadata(path), where=f"{path} metadata", error=CheckpointError)
    folder = path.parent.resolve()
    for key in CODE_SETTINGS:
        text = values.get(key)
        if not isinstance(text, str) or not looks_like_spec(text) or (folder / text).exists():
            continue
        spec = parse_spec(text, base=folder, what=key, error=CheckpointError)
        if not metadata_may_name(spec, folder):
            what = (
                "a file outside the checkpoint's folder" if spec.is_file else "an installed module"
            )
            raise CheckpointError(
                f"checkpoint metadata of {path} names {key} {text!r}, {what}, whose code hesscli "
                "will not run on a file's say-so",
                f"pass --{key} explicitly if you trust it",
            )
    return values


def metadata_may_name(spec: ObjectSpec, folder: Path) -> bool:
    """Whether checkpoint metadata in ``folder`` may name the code ``spec``."""
    return spec.is_file and Path(spec.target).is_relative_to(folder.resolve())


def merge_settings(
    options: Mapping[str, Any],
    *,
    cwd: Path,
    config: ConfigFile | None,
    metadata: Mapping[str, Any],
    checkpoint_dir: Path | None,
    defaults: Mapping[str, Any],
) -> dict[str, Sourced]:
    """Pick every setting from the highest-precedence place that gives it.

    Args:
        options: Command-line values; ``None`` means not given.
        cwd: Base directory for command-line paths.
        config: The project config, if any.
        metadata: Checkpoint metadata defaults.
        checkpoint_dir: Base directory for metadata paths.
        defaults: Built-in defaults.
    """
    merged: dict[str, Sourced] = {}
    for key in {*options, *defaults, *SETTING_TYPES}:
        if options.get(key) is not None:
            merged[key] = Sourced(options[key], OPTION, cwd)
        elif key in metadata and checkpoint_dir is not None:
            merged[key] = Sourced(metadata[key], METADATA, checkpoint_dir)
        elif config is not None and key in config.values:
            merged[key] = Sourced(config.values[key], str(config.path), config.path.parent)
        else:
            merged[key] = Sourced(defaults.get(key), DEFAULT, cwd)
    return merged
