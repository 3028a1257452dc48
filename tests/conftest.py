"""Shared fixtures: a CLI runner through the real error boundary, and copies of sample models."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner, Result

from hesscli.cli.app import app

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "sample_models"
WIDTH = "120"
#: Environment variable naming the device of the device tests (``cuda``, ``cuda:1``, ``cpu``).
DEVICE_VARIABLE = "HESSCLI_TEST_DEVICE"


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--device``: where the device-parametrised accuracy tests compute."""
    parser.addoption(
        "--device",
        default=None,
        help=f"device of the tests marked 'device' (default: ${DEVICE_VARIABLE}, else cpu)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``device`` marker (``pytest -m device`` selects the accuracy tests)."""
    config.addinivalue_line(
        "markers", "device: accuracy on the test device (--device) against float64 CPU truth"
    )


@pytest.fixture(scope="session")
def test_device(request: pytest.FixtureRequest) -> torch.device:
    """The device asked for by ``--device`` or ``$HESSCLI_TEST_DEVICE`` (default: the CPU).

    A device that was asked for but is absent fails the tests: it never skips them.
    """
    name = request.config.getoption("--device") or os.environ.get(DEVICE_VARIABLE) or "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        pytest.fail(f"--device {name} was asked for, but CUDA is not available")
    return device


@pytest.fixture
def cli() -> Callable[..., Result]:
    """Invoke ``hesscli`` with the Rich width pinned; returns typer's ``Result``."""
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(app, list(args), env={"COLUMNS": WIDTH, "NO_COLOR": "1"})

    return invoke


@pytest.fixture
def samples(tmp_path: Path) -> Path:
    """A private copy of ``sample_models/`` (tests may run from inside it)."""
    target = tmp_path / "sample_models"
    shutil.copytree(SAMPLES, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``: proof that nothing was written into inputs."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a module: its models are tiny and the runner has two cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
