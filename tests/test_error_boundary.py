"""The error boundary holds whatever the user's code, files and numbers do (issue 14).

Each class of odd input is built for real in ``tmp_path`` (models that raise or print on the
last, shorter micro-batch, FIFOs, sockets, hard links, unwritable targets, NaN options) and run
through the real ``hesscli`` command line. The contract of a user error: exit 2, one line on
stderr starting ``hesscli: error:``, no traceback, nothing on stdout, no input changed and no
file added. The contract of a success: stdout is exactly one JSON document, whatever the
user's code printed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner, Result

from hesscli.cli.app import app
from hesscli.cli.failures import user_code_failure
from tests.conftest import tree_digest

MODEL = textwrap.dedent(
    """
    import os
    import subprocess
    import sys

    import torch
    from torch import nn

    MARK = 999.0  # the last sample carries this value: only the last micro-batch holds it


    def _last(x):
        return bool((x[:, 0] > MARK).any())


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(4, 8)
            self.fc2 = nn.Linear(8, 3)

        def forward(self, x):
            return self.fc2(torch.tanh(self.fc1(x)))


    class FailsOnLast(Net):
        def forward(self, x):
            if _last(x):
                raise ValueError("the last sample is refused")
            return super().forward(x)


    class NanOnLast(Net):
        def forward(self, x):
            out = super().forward(x)
            return out * float("nan") if _last(x) else out


    class ExitsOnLast(Net):
        def forward(self, x):
            if _last(x):
                sys.exit(3)
            return super().forward(x)


    class Chatty(Net):
        def forward(self, x):
            print("chatty forward", x.shape[0])
            return super().forward(x)


    class LowLevelChatty(Net):
        def forward(self, x):
            os.write(1, b"fd-one write\\n")
            print("dunder stdout", file=sys.__stdout__, flush=True)
            subprocess.run(["echo", "child process"], check=True)
            return super().forward(x)


    def failing_loss(outputs, targets):
        if bool((targets == 2).any()):
            raise RuntimeError("label 2 is not supported")
        return torch.nn.functional.cross_entropy(outputs, targets)


    def batches_then_failure():
        yield torch.randn(6, 4), torch.tensor([0, 1, 0, 1, 0, 1])
        raise OSError("the second shard is missing")


    def factory_that_raises():
        raise KeyError("no such split")


    def model_factory_that_exits():
        sys.exit(4)
    """
)

CHATTY_IMPORT = 'print("model file imported")\n' + MODEL
SAMPLES = 10
MICRO_BATCH = "4"  # micro-batches of 4, 4 and 2: the last one is shorter


def _state() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return {
        "fc1.weight": torch.randn(8, 4, generator=gen),
        "fc1.bias": torch.randn(8, generator=gen),
        "fc2.weight": torch.randn(3, 8, generator=gen),
        "fc2.bias": torch.randn(3, generator=gen),
    }


class Folder:
    """A model file, a checkpoint and data in ``root``, and ``hesscli`` run on them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.model_py = root / "model.py"
        self.model_py.write_text(MODEL, encoding="utf-8")
        self.ckpt = root / "net.pt"
        torch.save(_state(), self.ckpt)
        gen = torch.Generator().manual_seed(2)
        inputs = torch.randn(SAMPLES, 4, generator=gen)
        inputs[-1, 0] = 1000.0  # the marker of the last sample
        targets = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1, 0, 2])
        self.data = root / "data.pt"
        torch.save({"inputs": inputs, "targets": targets}, self.data)
        self.before: dict[str, str] = {}

    def model(self, name: str = "Net") -> str:
        return f"{self.model_py}:{name}"

    def invoke(self, *args: str) -> Result:
        """``hesscli ARGS --no-config`` through the real error boundary."""
        self.before = tree_digest(self.root)
        runner = CliRunner()
        env = {"COLUMNS": "80", "NO_COLOR": "1"}
        return runner.invoke(app, [*args, "--no-config"], env=env)

    def run(self, command: str, *extra: str, model: str = "Net") -> Result:
        """``hesscli COMMAND net.pt --model model.py:MODEL --data data.pt EXTRA``."""
        return self.invoke(
            command,
            str(self.ckpt),
            "--model",
            self.model(model),
            "--data",
            str(self.data),
            "--micro-batch",
            MICRO_BATCH,
            *extra,
        )

    def assert_error(self, result: Result, pattern: str) -> str:
        """The whole user-error contract; ``pattern`` must match the one stderr line."""
        context = f"exit {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        assert result.exit_code == 2, context
        assert result.exception is None or isinstance(result.exception, SystemExit), context
        assert "Traceback" not in result.output, context
        assert result.stdout == "", context
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, context
        assert lines[0].startswith("hesscli: error: "), context
        assert re.search(pattern, lines[0]), f"{pattern!r} not in {lines[0]!r}"
        assert tree_digest(self.root) == self.before, "an input changed or a file was added"
        return lines[0]


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread: None) -> Folder:
    monkeypatch.chdir(tmp_path)
    return Folder(tmp_path)


@pytest.fixture
def no_hang() -> Iterator[None]:
    """Fail (instead of hanging the suite) when a test blocks, e.g. on opening a FIFO."""

    def stop(signum: int, frame: object) -> None:
        raise TimeoutError("blocked for 60 s: something opened a FIFO or waited forever")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# -- the fixtures themselves work ------------------------------------------------------------


def test_the_valid_model_runs(folder: Folder) -> None:
    result = folder.run("trace", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["inputs"]["samples"] == SAMPLES


# -- 1. user code can fail anywhere ----------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "stage"),
    [
        ("info", "the gradient"),
        ("trace", "the exact diagonal"),  # a small model's trace is its exact diagonal's sum
        ("diag", "the exact diagonal"),
        ("spectrum", "the curvature products"),
    ],
)
def test_forward_failing_on_the_last_short_micro_batch(
    folder: Folder, command: str, stage: str
) -> None:
    line = folder.assert_error(
        folder.run(command, model="FailsOnLast"),
        r"the model's forward raised ValueError: the last sample is refused",
    )
    assert f"during {stage}" in line
    assert "micro-batch 3 of 3 (samples 8-9)" in line
    assert "model.py:" in line  # where in the user's file


@pytest.mark.parametrize("command", ["diag", "trace", "spectrum"])
def test_nan_outputs_on_the_last_micro_batch(folder: Folder, command: str) -> None:
    """NaN curvature (here from NaN outputs) is one line, never eigh's LinAlgError."""
    folder.assert_error(
        folder.run(command, "--exact" if command == "diag" else "--json", model="NanOnLast"), r"NaN"
    )


def test_forward_calling_sys_exit(folder: Folder) -> None:
    line = folder.assert_error(
        folder.run("diag", model="ExitsOnLast"), r"the model's forward called sys\.exit\(3\)"
    )
    assert "micro-batch 3 of 3" in line


def test_custom_loss_failing_on_the_last_micro_batch(folder: Folder) -> None:
    line = folder.assert_error(
        folder.run("spectrum", "--loss", f"{folder.model_py}:failing_loss", "--top-k", "1"),
        r"the loss raised RuntimeError: label 2 is not supported",
    )
    assert "micro-batch 3 of 3 (samples 8-9)" in line


def test_model_file_failing_at_import(folder: Folder) -> None:
    bad = folder.root / "broken.py"
    bad.write_text("import torch\nraise ImportError('needs a GPU build')\n", encoding="utf-8")
    folder.assert_error(
        folder.invoke("info", str(folder.ckpt), "--model", f"{bad}:Net", "--data", "data.pt"),
        r"importing model file .*broken\.py failed: ImportError: needs a GPU build",
    )


def test_model_file_calling_exit_at_import(folder: Folder) -> None:
    bad = folder.root / "exits.py"
    bad.write_text("import sys\nsys.exit('no')\n", encoding="utf-8")
    folder.assert_error(
        folder.invoke("info", str(folder.ckpt), "--model", f"{bad}:Net", "--data", "data.pt"),
        r"importing model file .*exits\.py failed: it called sys\.exit\('no'\)",
    )


def test_model_factory_calling_exit(folder: Folder) -> None:
    model = folder.model("model_factory_that_exits")
    folder.assert_error(
        folder.invoke("info", str(folder.ckpt), "--model", model, "--data", "data.pt"),
        r"the model's code called sys\.exit\(4\) at model\.py:\d+ in "
        r"model_factory_that_exits, during loading \(building the model\); fix that code and",
    )


def test_data_factory_raising(folder: Folder) -> None:
    spec = f"{folder.model_py}:factory_that_raises"
    folder.assert_error(
        folder.invoke("info", str(folder.ckpt), "--model", folder.model(), "--data", spec),
        r"data factory .*factory_that_raises raised KeyError: 'no such split'",
    )


def test_data_factory_generator_failing_midway(folder: Folder) -> None:
    spec = f"{folder.model_py}:batches_then_failure"
    folder.assert_error(
        folder.invoke("info", str(folder.ckpt), "--model", folder.model(), "--data", spec),
        r"batches_then_failure raised OSError: the second shard is missing while producing "
        r"batch 1",
    )


def test_a_hesscli_bug_keeps_its_traceback() -> None:
    """An exception from hesscli's own code (no user frame below it) is not disguised."""
    from hesscli.engine.functional import micro_batches

    with pytest.raises(AttributeError) as info:
        next(micro_batches(None, 4))  # type: ignore[arg-type]
    assert user_code_failure(info.value) is None


def test_a_hesscli_hook_failing_inside_a_model_is_a_bug() -> None:
    """hesscli code called from inside a forward (a hook) failing is hesscli's fault."""
    from hesscli.engine.functional import micro_batches

    class Hooked(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            next(micro_batches(None, 4))  # type: ignore[arg-type]
            return x

    with pytest.raises(AttributeError) as info:
        Hooked()(torch.zeros(1))
    assert user_code_failure(info.value) is None


# -- 2. user code that prints does not reach stdout ------------------------------------------


def test_prints_at_import_and_in_forward_go_to_stderr(folder: Folder) -> None:
    folder.model_py.write_text(CHATTY_IMPORT, encoding="utf-8")
    result = folder.run("trace", "--json", model="Chatty")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)  # exactly one JSON document, nothing else
    assert document["command"] == "trace"
    assert "model file imported" in result.stderr
    assert "chatty forward" in result.stderr


def test_prints_do_not_reach_the_table_either(folder: Folder) -> None:
    folder.model_py.write_text(CHATTY_IMPORT, encoding="utf-8")
    result = folder.run("trace", model="Chatty")
    assert result.exit_code == 0, result.output
    assert "chatty" not in result.stdout
    assert "imported" not in result.stdout
    assert "chatty forward" in result.stderr


def test_low_level_writes_to_stdout_go_to_stderr(folder: Folder) -> None:
    """File descriptor 1, ``sys.__stdout__`` and child processes: a real process, real fds."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "80", "PYTHONWARNINGS": "ignore"}
    command = [
        sys.executable, "-m", "hesscli", "trace", str(folder.ckpt), "--model",
        folder.model("LowLevelChatty"), "--data", str(folder.data), "--json", "--no-config",
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["command"] == "trace", proc.stdout[:500]
    for marker in ("fd-one write", "dunder stdout", "child process"):
        assert marker in proc.stderr


def test_help_still_goes_to_stdout(folder: Folder) -> None:
    result = CliRunner().invoke(app, ["trace", "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0
    assert "--curvature" in result.stdout


# -- 3. paths that are not regular files -----------------------------------------------------


def _socket(path: Path) -> socket.socket:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    return server


def test_checkpoint_fifo_is_refused_at_once(folder: Folder, no_hang: None) -> None:
    fifo = folder.root / "ckpt.pt"
    os.mkfifo(fifo)
    folder.assert_error(
        folder.invoke("info", str(fifo), "--model", folder.model(), "--data", "data.pt"),
        r"ckpt\.pt is a FIFO \(named pipe\), not a regular file",
    )


def test_checkpoint_fifo_from_the_project_config(folder: Folder, no_hang: None) -> None:
    fifo = folder.root / "ckpt.pt"
    os.mkfifo(fifo)
    (folder.root / "hesscli.toml").write_text(
        'checkpoint = "ckpt.pt"\nmodel = "model.py:Net"\ndata = "data.pt"\n', encoding="utf-8"
    )
    folder.before = tree_digest(folder.root)
    result = CliRunner().invoke(app, ["info"], env={"COLUMNS": "80"})
    folder.assert_error(result, r"checkpoint .*ckpt\.pt is a FIFO")


def test_data_fifo_and_model_fifo(folder: Folder, no_hang: None) -> None:
    fifo = folder.root / "data_pipe.pt"
    os.mkfifo(fifo)
    folder.assert_error(
        folder.invoke("info", str(folder.ckpt), "--model", folder.model(), "--data", str(fifo)),
        r"data_pipe\.pt is a FIFO",
    )
    model_fifo = folder.root / "pipe_model.py"
    os.mkfifo(model_fifo)
    folder.assert_error(
        folder.invoke(
            "info", str(folder.ckpt), "--model", f"{model_fifo}:Net", "--data", "data.pt"
        ),
        r"pipe_model\.py is a FIFO",
    )


def test_config_and_baseline_fifos(folder: Folder, no_hang: None) -> None:
    fifo = folder.root / "pipe.toml"
    os.mkfifo(fifo)
    result = CliRunner().invoke(
        app, ["info", str(folder.ckpt), "--config", str(fifo)], env={"COLUMNS": "80"}
    )
    folder.before = tree_digest(folder.root)
    folder.assert_error(result, r"pipe\.toml is a FIFO")
    baseline = folder.root / "baseline.json"
    os.mkfifo(baseline)
    folder.assert_error(
        folder.run("check", "--baseline", str(baseline)), r"baseline\.json is a FIFO"
    )


def test_devices_and_sockets_are_refused(folder: Folder, no_hang: None) -> None:
    folder.assert_error(
        folder.invoke("info", "/dev/null", "--model", folder.model(), "--data", "data.pt"),
        r"/dev/null is a character device",
    )
    folder.assert_error(
        folder.invoke("info", str(folder.ckpt), "--model", folder.model(), "--data", "/dev/zero"),
        r"/dev/zero is a character device",
    )
    sock = _socket(folder.root / "data.sock")
    try:
        folder.assert_error(
            folder.invoke(
                "info", str(folder.ckpt), "--model", folder.model(), "--data", sock.getsockname()
            ),
            r"data\.sock is a socket",
        )
    finally:
        sock.close()


# -- 4. never overwrite an input, and know before the run that outputs can be written -------


@pytest.mark.parametrize("which", ["ckpt", "data", "model_py"])
def test_output_hard_linked_to_an_input_is_refused(folder: Folder, which: str) -> None:
    out = folder.root / "result.json"
    os.link(getattr(folder, which), out)
    folder.assert_error(folder.run("info", "--output", str(out)), r"is one of the input files")


def test_convert_output_hard_linked_to_the_checkpoint(folder: Folder) -> None:
    out = folder.root / "net.safetensors"
    os.link(folder.ckpt, out)
    folder.assert_error(
        folder.invoke(
            "convert",
            str(folder.ckpt),
            "--model",
            folder.model(),
            "--data",
            "data.pt",
            "--output",
            str(out),
        ),
        r"--output .*net\.safetensors is one of the input files",
    )


def test_output_symlink_and_dotdot_spelling_are_refused(folder: Folder) -> None:
    link = folder.root / "link.json"
    link.symlink_to(folder.ckpt)
    folder.assert_error(folder.run("info", "--output", str(link)), r"one of the input files")
    (folder.root / "sub").mkdir()
    spelled = f"{folder.root}/sub/../net.pt"
    folder.assert_error(folder.run("info", "-o", spelled), r"one of the input files")


def test_plot_hard_linked_to_the_checkpoint_is_refused(folder: Folder) -> None:
    plot = folder.root / "density.png"
    os.link(folder.ckpt, plot)
    folder.assert_error(
        folder.run("density", "--plot", str(plot)), r"--plot .*is one of the input files"
    )


def test_plot_and_output_hard_linked_to_each_other(folder: Folder) -> None:
    out = folder.root / "out.json"
    out.write_text("{}", encoding="utf-8")
    plot = folder.root / "plot.png"
    os.link(out, plot)
    folder.assert_error(
        folder.run("density", "--output", str(out), "--plot", str(plot)),
        r"--plot and --output both name",
    )


@pytest.mark.parametrize("option", ["--output", "--plot"])
@pytest.mark.parametrize("where", ["missing/x.png", "data.pt/x.png"])
def test_unwritable_targets_fail_before_the_run(folder: Folder, option: str, where: str) -> None:
    """Refused up front: no plan line, no progress, no result on stdout, no file left."""
    folder.assert_error(
        folder.run("report", option, str(folder.root / where)),
        rf"{option} .*(does not exist|is not a folder)",
    )


def _unwritable_file(root: Path) -> Path:
    """An existing file this process cannot open for writing, root or not.

    A read-only file in a scratch folder stops ordinary users; root passes permissions, so
    then a kernel file without a write handler (sysfs/procfs refuse it to everyone).
    """
    scratch = root.parent / f"{root.name}_readonly"
    scratch.mkdir(exist_ok=True)
    private = scratch / "locked.json"
    private.write_text("{}", encoding="utf-8")
    private.chmod(0o444)
    for target in (private, Path("/sys/kernel/notes"), Path("/proc/sys/kernel/version")):
        try:
            os.close(os.open(target, os.O_WRONLY | os.O_APPEND))
        except OSError:
            return target
    raise AssertionError("no file on this machine refuses writing: the test cannot be posed")


def test_unwritable_file_fails_before_the_run(folder: Folder) -> None:
    target = _unwritable_file(folder.root)
    folder.assert_error(
        folder.run("report", "--output", str(target)),
        rf"cannot write --output .*{re.escape(target.name)}",
    )


def test_output_is_written_before_stdout_and_probe_leaves_no_file(folder: Folder) -> None:
    out = folder.root / "out.json"
    result = folder.run("trace", "--json", "--output", str(out))
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text(encoding="utf-8")) == json.loads(result.stdout)
    fifo = folder.root / "ckpt_pipe.pt"
    os.mkfifo(fifo)
    later = folder.root / "later.json"
    result = folder.invoke("info", str(fifo), "--model", folder.model(), "-o", str(later))
    folder.assert_error(result, r"is a FIFO")
    assert not later.exists()  # the writability probe removed what it created


# -- 5. numbers that are not numbers --------------------------------------------------------

NUMBER_OPTIONS = [
    ("spectrum", "--tol"),
    ("report", "--tol"),
    ("report", "--sigma"),
    ("report", "--lr"),
    ("density", "--sigma"),
    ("compare", "--tol"),
    ("trace", "--target-error"),
    ("check", "--max-eigenvalue"),
    ("check", "--min-eigenvalue"),
    ("check", "--max-trace"),
    ("check", "--max-layer-trace"),
    ("check", "--stability-lr"),
    ("check", "--tolerance"),
]


@pytest.mark.parametrize(("command", "option"), NUMBER_OPTIONS)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e999", "NaN", "-Infinity"])
def test_numeric_options_refuse_nan_and_infinity(
    folder: Folder, command: str, option: str, value: str
) -> None:
    folder.assert_error(folder.run(command, option, value), rf"Invalid value for '{option}'")


def test_every_float_option_is_validated() -> None:
    """A float option added later without the shared validator fails here."""
    import typer.main

    group = typer.main.get_command(app)
    unchecked, checked = [], []
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        for param in command.params:
            descriptor = getattr(param, "type_descriptor", None)
            if descriptor is None or descriptor.annotation is not float:
                continue
            checked.append(param.opts[0])
            if param.callback is None:
                unchecked.append(f"{name} {param.opts}")
    assert not unchecked
    assert {"--tol", "--sigma", "--lr", "--max-eigenvalue", "--target-error"} <= set(checked)


def test_spectrum_tolerance_bounds(folder: Folder) -> None:
    folder.assert_error(folder.run("spectrum", "--tol", "0"), r"'--tol': 0 is not > 0")
    folder.assert_error(folder.run("spectrum", "--tol", "1"), r"'--tol': 1 is not < 1")
    folder.assert_error(folder.run("spectrum", "--tol", "-1e-3"), r"is not > 0")


def test_finite_thresholds_still_work(folder: Folder) -> None:
    result = folder.run("check", "--max-eigenvalue", "1e9", "--min-eigenvalue", "-1e9", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["results"]["passed"] is True


# -- help, choices, completion --------------------------------------------------------------


def _help(*command: str) -> str:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    return result.stdout


def test_help_lists_the_choices() -> None:
    text = _help("report")
    for choices in (
        "hessian|ggn",
        "float32|float64",
        "auto|forward|reverse|fd",
        "auto|samples|tokens",
        "auto|cpu|cuda",
    ):
        assert choices in text, choices
    assert "hutch++" in _help("trace")
    assert "%%" not in text
    assert "80%" in text
    assert "<bool>" not in text  # flags take no value
    assert "<bool>" not in _help()


def test_choices_match_what_the_library_accepts() -> None:
    from typing import get_args

    from hesscli.cli import options as opt
    from hesscli.engine.device import DTYPES
    from hesscli.engine.routes import METHODS
    from hesscli.loading.losses import NORMALISATIONS
    from hesscli.runs.prepare import CURVATURES
    from hesscli.runs.trace import TRACE_METHODS

    def values(alias: object) -> set[str]:
        literal = get_args(alias)[0]  # Annotated[Literal[...] | None, ...]
        return {v for arg in get_args(literal) for v in get_args(arg)} or set(get_args(literal))

    assert values(opt.Curvature) == set(CURVATURES)
    assert values(opt.Dtype) == set(DTYPES)
    assert values(opt.HvpMethod) == set(METHODS)
    assert values(opt.Normalisation) == set(NORMALISATIONS)
    assert "hutch++" in TRACE_METHODS


def test_choices_stay_case_insensitive(folder: Folder) -> None:
    result = folder.run("trace", "--curvature", "GGN", "--dtype", "Float64", "--json")
    assert result.exit_code == 0, result.output
    settings = json.loads(result.stdout)["settings"]
    assert settings["curvature"] == "ggn"
    assert settings["dtype"] == "float64"
    folder.assert_error(
        folder.run("trace", "--curvature", "fisher"), r"'fisher' is not one of 'hessian', 'ggn'"
    )


def test_shell_completion_is_available() -> None:
    assert "--install-completion" in _help()
    result = CliRunner().invoke(app, ["--show-completion", "bash"])
    assert result.exit_code == 0, result.output
    assert "_HESSCLI_COMPLETE" in result.stdout


def test_completion_completes_commands_and_choices() -> None:
    env = {**os.environ, "_HESSCLI_COMPLETE": "complete_bash", "COMP_CWORD": "3"}
    env["COMP_WORDS"] = "hesscli trace --curvature "
    proc = subprocess.run(
        [sys.executable, "-m", "hesscli"], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.stdout.split() == ["hessian", "ggn"], proc.stderr[-2000:]


# -- convert --json in the common envelope ---------------------------------------------------


def test_convert_json_has_the_common_envelope(folder: Folder) -> None:
    out = folder.root / "converted.safetensors"
    result = folder.invoke(
        "convert", str(folder.ckpt), "--model", folder.model(), "--data", "data.pt",
        "--output", str(out), "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert list(document)[:6] == [
        "schema_version", "hesscli_version", "command", "inputs", "settings", "results",
    ]  # fmt: skip
    assert document["command"] == "convert"
    assert document["inputs"]["samples"] == SAMPLES
    assert document["results"]["written"] == str(out)
    assert "seconds" in document["cost"]
