"""Project config discovery, precedence, validation, and the metadata code-safety rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hesscli.errors import CheckpointError, ConfigError
from hesscli.loading.config import checkpoint_defaults, find_config, merge_settings, read_config
from hesscli.loading.problem import DEFAULTS, resolve_settings


def test_nearest_config_wins_and_pyproject_without_table_is_skipped(tmp_path):
    (tmp_path / "hesscli.toml").write_text('model = "outer.py:Net"\n')
    inner = tmp_path / "a" / "b"
    inner.mkdir(parents=True)
    (tmp_path / "a" / "pyproject.toml").write_text('[project]\nname = "x"\n')
    config = find_config(inner)
    assert config is not None and config.path == tmp_path / "hesscli.toml"
    (tmp_path / "a" / "pyproject.toml").write_text('[tool.hesscli]\nmodel = "inner.py:Net"\n')
    assert find_config(inner).values == {"model": "inner.py:Net"}


def test_unknown_key_suggests_the_right_one(tmp_path):
    path = tmp_path / "hesscli.toml"
    path.write_text('modle = "m.py:Net"\n')
    with pytest.raises(ConfigError, match=r"unknown setting 'modle'; did you mean 'model'"):
        read_config(path)


def test_wrong_type_is_named(tmp_path):
    path = tmp_path / "hesscli.toml"
    path.write_text('max_samples = "ten"\n')
    with pytest.raises(ConfigError, match=r"'max_samples' should be a integer"):
        read_config(path)


def test_precedence_option_metadata_config_default(tmp_path):
    config_path = tmp_path / "hesscli.toml"
    config_path.write_text('loss = "mse"\ndata = "cfg.pt"\nseed = 5\ndtype = "float64"\n')
    config = read_config(config_path)
    merged = merge_settings(
        {"loss": "nll", "data": None},
        cwd=tmp_path,
        config=config,
        metadata={"data": "meta.pt", "seed": 7},
        checkpoint_dir=tmp_path / "ckpt",
        defaults=DEFAULTS,
    )
    assert (merged["loss"].value, merged["loss"].source) == ("nll", "option")
    assert (merged["data"].value, merged["data"].source) == ("meta.pt", "checkpoint metadata")
    assert merged["data"].base == tmp_path / "ckpt"
    assert merged["seed"].value == 7
    assert (merged["dtype"].value, merged["dtype"].source) == ("float64", str(config_path))
    assert (merged["device"].value, merged["device"].source) == ("auto", "default")


def _with_metadata(path, defaults):
    save_file({"w": torch.zeros(1)}, str(path), metadata={"hesscli": json.dumps(defaults)})


def test_metadata_may_not_name_installed_modules(tmp_path):
    path = tmp_path / "evil.safetensors"
    _with_metadata(path, {"model": "subprocess:run", "model_kwargs": {"args": ["true"]}})
    with pytest.raises(CheckpointError, match=r"names model 'subprocess:run', an installed module"):
        checkpoint_defaults(path)
    _with_metadata(path, {"data": "os:getcwd"})
    with pytest.raises(CheckpointError, match="pass --data explicitly"):
        checkpoint_defaults(path)


def test_metadata_may_name_code_in_its_folder_only(tmp_path):
    path = tmp_path / "ok.safetensors"
    _with_metadata(path, {"model": "sub/model.py:Net", "data": "../data.pt", "loss": "mse"})
    assert checkpoint_defaults(path)["model"] == "sub/model.py:Net"
    _with_metadata(path, {"model": "../src/model.py:Net"})
    with pytest.raises(CheckpointError, match="a file outside the checkpoint's folder"):
        checkpoint_defaults(path)
    stdlib_file = str(Path(json.__file__).parent.parent / "subprocess.py")
    _with_metadata(path, {"model": f"{stdlib_file}:run", "model_kwargs": {"args": ["true"]}})
    with pytest.raises(CheckpointError, match="pass --model explicitly"):
        checkpoint_defaults(path)


def test_explicit_config_path_and_missing_checkpoint(tmp_path):
    config = tmp_path / "custom.toml"
    config.write_text('checkpoint = "m.pt"\n')
    settings, found = resolve_settings({}, cwd=tmp_path, config_path=config, use_config=True)
    assert found.path == config
    assert settings["checkpoint"].value == str(tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="no checkpoint given"):
        resolve_settings({}, cwd=tmp_path, config_path=None, use_config=False)
