"""Real training checkpoints: Lightning files, numpy metrics, loss buffers, teachers, students.

Each checkpoint is written here by ``torch.save`` the way training loops write them, then read
through the real loader and the real command line. What loads, what is listed as ignored, and
the one-line refusals of strict matching are all asserted; the checkpoint file is never changed.
"""

from __future__ import annotations

import hashlib
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hesscli.errors import CheckpointError
from hesscli.loading.checkpoint import load_into, read_checkpoint
from hesscli.loading.keys import match_keys

MODEL_PY = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(4, 6)
            self.fc2 = nn.Linear(6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(torch.tanh(self.fc1(x)))
    """
)


class Net(nn.Module):
    """The same network as ``MODEL_PY``, for the loader-level tests."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


class NotAMetric:
    """An arbitrary class: a weights-only load must keep refusing it."""

    def __init__(self) -> None:
        self.value = 1


def _weights(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return Net().state_dict()


def _prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v for k, v in state.items()}


def _optimizer_state(state: dict[str, torch.Tensor]) -> dict:
    """A real Adam state after one step, as Lightning stores it under ``optimizer_states``."""
    net = Net()
    net.load_state_dict(state)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    return optimizer.state_dict()


def _lightning(state: dict[str, torch.Tensor], prefix: str = "net.") -> dict:
    return {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": _prefixed(state, prefix),
        "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": 3}}}},
        "callbacks": {"ModelCheckpoint": {"best_model_score": torch.tensor(0.91)}},
        "optimizer_states": [_optimizer_state(state)],
        "lr_schedulers": [],
        "hparams_name": "kwargs",
        "hyper_parameters": {"lr": 1e-3, "hidden": 6},
    }


def _loaded(path: Path, **options: object) -> tuple[Net, object, object]:
    raw = read_checkpoint(path)
    model = Net()
    report = load_into(model, raw, **options)  # type: ignore[arg-type]
    return model, raw, report


def _equal(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    mine = model.state_dict()
    return mine.keys() == state.keys() and all(torch.equal(mine[k], state[k]) for k in state)


# -- the loader -------------------------------------------------------------------------------
@pytest.mark.parametrize("prefix", ["net.", "network.", "model."])
def test_lightning_checkpoint_loads_and_lists_what_it_left_out(tmp_path, prefix):
    state = _weights(1)
    path = tmp_path / "epoch=3.ckpt"
    torch.save(_lightning(state, prefix), path)
    model, raw, report = _loaded(path)
    assert _equal(model, state)
    assert raw.container == "state_dict"
    assert report.prefix == f"-{prefix}"
    assert raw.ignored == (
        "epoch",
        "global_step",
        "pytorch-lightning_version",
        "loops",
        "callbacks",
        "optimizer_states",
        "lr_schedulers",
        "hparams_name",
        "hyper_parameters",
    )


def test_numpy_metrics_load_without_trusting_pickle(tmp_path):
    state = _weights(2)
    path = tmp_path / "best.pt"
    torch.save(
        {
            "model_state_dict": state,
            "best_acc": np.float64(0.93),
            "best_epoch": np.int64(7),
            "lr": np.float32(0.1),
            "improved": np.bool_(True),
            "metric_dtype": np.dtype("float32"),
            "epoch": 9,
        },
        path,
    )
    model, raw, _ = _loaded(path)
    assert _equal(model, state)
    assert raw.ignored == ("best_acc", "best_epoch", "lr", "improved", "metric_dtype", "epoch")


def test_numpy_metrics_inside_the_state_dict_are_listed_with_their_path(tmp_path):
    state = _weights(2)
    path = tmp_path / "best.pt"
    torch.save({"state_dict": {**state, "best_acc": np.float64(0.5)}, "ema": state}, path)
    raw = read_checkpoint(path)
    assert raw.ignored == ("ema", "state_dict.best_acc")


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param(NotAMetric(), id="arbitrary-class"),
        pytest.param(np.arange(3.0), id="numpy-array"),
    ],
)
def test_other_pickled_objects_still_need_trust(tmp_path, entry):
    path = tmp_path / "odd.pt"
    torch.save({"state_dict": _weights(0), "extra": entry}, path)
    with pytest.raises(CheckpointError, match=r"--trust-pickle if you trust the file") as error:
        read_checkpoint(path)
    assert "\n" not in error.value.one_line()


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"criterion.weight": torch.ones(3)}, id="loss-buffer"),
        pytest.param(_prefixed(_weights(5), "teacher."), id="teacher"),
    ],
)
def test_extra_modules_are_refused_by_default_and_ignored_when_not_strict(tmp_path, extra):
    state = _weights(3)
    path = tmp_path / "distil.pt"
    torch.save({**state, **extra}, path)
    with pytest.raises(CheckpointError) as error:
        _loaded(path)
    line = error.value.one_line()
    assert f"{len(extra)} unexpected: {next(iter(extra))}" in line
    assert "pass --no-strict" in line and "\n" not in line
    model, _, report = _loaded(path, strict=False)
    assert _equal(model, state)
    assert report.ignored == tuple(extra) and report.unexpected == ()


def test_teacher_beside_a_lightning_model_prefix(tmp_path):
    state = _weights(3)
    teacher = _prefixed(_weights(4), "teacher.")
    path = tmp_path / "distil.ckpt"
    torch.save({"state_dict": {**_prefixed(state, "model."), **teacher}, "epoch": 1}, path)
    model, raw, report = _loaded(path, strict=False)
    assert _equal(model, state)
    assert report.prefix == "-model."
    assert report.ignored == tuple(teacher)  # named as they are in the file
    assert raw.ignored == ("epoch",)


def test_student_and_teacher_need_a_named_prefix(tmp_path):
    student, teacher = _weights(6), _weights(7)
    path = tmp_path / "kd.pt"
    torch.save({**_prefixed(student, "student."), **_prefixed(teacher, "teacher.")}, path)
    for strict in (True, False):
        with pytest.raises(CheckpointError) as error:
            _loaded(path, strict=strict)
        line = error.value.one_line()
        assert "4 missing: fc1.weight" in line
        assert "under 'student' and 'teacher': pass --checkpoint-prefix" in line
    for spelling in ("student", "student."):
        model, _, report = _loaded(path, checkpoint_prefix=spelling)
        assert _equal(model, student)
        assert report.prefix == "-student."
        assert report.ignored == tuple(_prefixed(teacher, "teacher."))
    model, _, _ = _loaded(path, checkpoint_prefix="teacher")
    assert _equal(model, teacher)


def test_one_copy_under_an_undocumented_prefix_is_named_in_the_hint(tmp_path):
    path = tmp_path / "backbone.pt"
    torch.save(_prefixed(_weights(8), "backbone."), path)
    with pytest.raises(CheckpointError, match=r"under 'backbone': pass --checkpoint-prefix "):
        _loaded(path)


def test_a_prefix_that_no_key_has_lists_the_prefixes_there_are(tmp_path):
    path = tmp_path / "kd.pt"
    torch.save({**_prefixed(_weights(6), "student."), "teacher.fc1.bias": torch.ones(6)}, path)
    with pytest.raises(CheckpointError, match=r"no checkpoint key starts with 'pupil\.'") as error:
        _loaded(path, checkpoint_prefix="pupil")
    assert "'student', 'teacher'" in error.value.one_line()
    with pytest.raises(CheckpointError, match=r"--checkpoint-prefix is empty"):
        _loaded(path, checkpoint_prefix=" . ")


def test_missing_weights_are_refused_even_when_not_strict(tmp_path):
    state = _weights(9)
    del state["fc2.bias"]
    path = tmp_path / "partial.pt"
    torch.save({**state, "criterion.weight": torch.ones(3)}, path)
    with pytest.raises(CheckpointError) as error:
        _loaded(path, strict=False)
    line = error.value.one_line()
    assert "1 missing: fc2.bias" in line and "unexpected" not in line
    assert "--no-strict ignores extra tensors, never missing weights" in line


def test_strict_reports_extra_keys_by_their_names_in_the_file():
    state = _prefixed(_weights(1), "module.")
    state["module.loss.pos_weight"] = torch.ones(1)
    report, _ = match_keys(state, Net())
    assert report.prefix == "-module."
    assert report.unexpected == ("module.loss.pos_weight",)


# -- the command line -------------------------------------------------------------------------
@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A folder with the model definition and a small data set (no config file)."""
    (tmp_path / "model.py").write_text(MODEL_PY)
    torch.manual_seed(0)
    torch.save(
        {"inputs": torch.randn(12, 4), "targets": torch.randint(0, 3, (12,))}, tmp_path / "data.pt"
    )
    return tmp_path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _args(project: Path, checkpoint: Path, *more: str) -> list[str]:
    model = f"{project / 'model.py'}:Net"
    return [
        str(checkpoint),
        "--model",
        model,
        "--data",
        str(project / "data.pt"),
        "--no-config",
        *more,
    ]


def test_cli_no_strict_lists_ignored_entries_in_json_and_on_stderr(cli, project):
    checkpoint = project / "last.ckpt"
    data = _lightning(_weights(1))
    data["state_dict"]["net.criterion.weight"] = torch.ones(3)
    data["best_acc"] = np.float64(0.88)
    torch.save(data, checkpoint)
    before = _digest(checkpoint)

    refused = cli("info", *_args(project, checkpoint, "--json"))
    assert refused.exit_code == 2, refused.output
    assert refused.stdout == ""
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hesscli: error: checkpoint ")
    assert "1 unexpected: net.criterion.weight" in lines[0] and "--no-strict" in lines[0]

    result = cli("info", *_args(project, checkpoint, "--json", "--no-strict"))
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    entry = document["results"]["checkpoint"]
    assert entry["prefix"] == "-net." and entry["container"] == "state_dict"
    assert entry["unexpected"] == []
    assert entry["ignored_entries"][:2] == ["epoch", "global_step"]
    assert "optimizer_states" in entry["ignored_entries"]
    assert "best_acc" in entry["ignored_entries"]
    assert entry["ignored_entries"][-1] == "net.criterion.weight"
    assert document["settings"]["sources"]["strict"] == "option"
    assert "ignored 11 entries: epoch, global_step" in result.stderr
    assert _digest(checkpoint) == before


def test_cli_checkpoint_prefix_on_a_curvature_command(cli, project):
    checkpoint = project / "kd.pt"
    torch.save(
        {**_prefixed(_weights(6), "student."), **_prefixed(_weights(7), "teacher.")}, checkpoint
    )
    before = _digest(checkpoint)
    refused = cli("trace", *_args(project, checkpoint, "--json"))
    assert refused.exit_code == 2, refused.output
    assert "pass --checkpoint-prefix with the one to analyse" in refused.stderr
    assert "Traceback" not in refused.output

    traces = {}
    for name in ("student", "teacher"):
        result = cli("trace", *_args(project, checkpoint, "--json", "--checkpoint-prefix", name))
        assert result.exit_code == 0, result.output
        document = json.loads(result.stdout)
        assert document["settings"]["sources"]["checkpoint_prefix"] == "option"
        assert "ignored 4 entries" in result.stderr
        traces[name] = document["results"]["trace"]["value"]
    assert traces["student"] != traces["teacher"]  # each copy's own weights were loaded
    assert _digest(checkpoint) == before


def test_cli_strict_can_be_switched_off_in_the_project_config(cli, project, monkeypatch):
    checkpoint = project / "buffers.pt"
    torch.save({**_weights(2), "criterion.weight": torch.ones(3)}, checkpoint)
    (project / "hesscli.toml").write_text(
        'model = "model.py:Net"\ndata = "data.pt"\nstrict = false\n'
    )
    monkeypatch.chdir(project)
    result = cli("info", str(checkpoint), "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["results"]["checkpoint"]["ignored_entries"] == ["criterion.weight"]
    refused = cli("info", str(checkpoint), "--strict")  # the option overrides the config
    assert refused.exit_code == 2
    assert "1 unexpected: criterion.weight" in refused.stderr
