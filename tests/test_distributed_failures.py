"""Distributed failures end every rank within seconds, each with one line (issue 14).

When one rank stops with a clean one-line error, its peers are either waiting in a collective
(which fails because the peer is gone) or computing (and the launcher stops them with SIGTERM).
Either way each healthy rank must print one line saying that a peer failed and exit 2, with no
gloo traceback. Two real CPU processes (gloo), started by hand with the launcher's variables
(to see each rank's exit code and stderr) or by torchrun (to see its SIGTERM handled).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

FILES = textwrap.dedent(
    """
    import os
    import time

    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(4, 8)
            self.fc2 = nn.Linear(8, 3)

        def forward(self, x):
            return self.fc2(torch.tanh(self.fc1(x)))


    class FailsOnRankOne(Net):
        def forward(self, x):
            if os.environ["RANK"] == "1" and torch.is_grad_enabled():  # not in the probe
                raise ValueError("rank one cannot go on")
            return super().forward(x)


    def data():
        gen = torch.Generator().manual_seed(0)
        return torch.randn(12, 4, generator=gen), torch.randint(0, 3, (12,), generator=gen)


    def data_missing_on_rank_one():
        if os.environ["RANK"] == "1":
            raise FileNotFoundError("shard file for rank 1")
        return data()


    def data_slow_on_rank_zero():
        if os.environ["RANK"] == "0":
            time.sleep(60)  # rank 0 is busy (not in a collective) when rank 1 fails
        return data_missing_on_rank_one()
    """
)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "model.py").write_text(FILES, encoding="utf-8")
    gen = torch.Generator().manual_seed(1)
    state = {
        "fc1.weight": torch.randn(8, 4, generator=gen),
        "fc1.bias": torch.randn(8, generator=gen),
        "fc2.weight": torch.randn(3, 8, generator=gen),
        "fc2.bias": torch.randn(3, generator=gen),
    }
    torch.save(state, tmp_path / "net.pt")
    return tmp_path


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"RANK", "WORLD_SIZE", "LOCAL_RANK"}}
    return env | {"OMP_NUM_THREADS": "1", "COLUMNS": "80", "PYTHONWARNINGS": "ignore"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _two_ranks(folder: Path, *args: str) -> list[subprocess.CompletedProcess]:
    """Start ranks 0 and 1 of a gloo group by hand; their results, in rank order."""
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        env = _env() | {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
        }
        command = [sys.executable, "-m", "hesscli", *args, "--no-config", "--device", "cpu"]
        procs.append(
            subprocess.Popen(
                command,
                cwd=folder,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    assert "Connection reset" not in stderr and "Connection closed" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize(
    ("model", "data", "failure"),
    [
        ("Net", "data_missing_on_rank_one", "shard file for rank 1"),  # while loading
        ("FailsOnRankOne", "data", "rank one cannot go on"),  # in a forward, mid-run
    ],
)
def test_a_failing_rank_ends_its_peer_with_one_line(
    folder: Path, model: str, data: str, failure: str
) -> None:
    start = time.monotonic()
    zero, one = _two_ranks(
        folder, "trace", "net.pt", "--model", f"model.py:{model}", "--data", f"model.py:{data}",
        "--json",
    )  # fmt: skip
    assert time.monotonic() - start < 200
    assert one.returncode == 2, one.stderr[-3000:]
    assert failure in _one_error_line(one.stderr)
    assert _one_error_line(one.stderr).startswith("hesscli (rank 1): error: ")
    assert zero.returncode == 2, zero.stderr[-3000:]
    line = _one_error_line(zero.stderr)
    assert line.startswith("hesscli: error: another process of this launch failed"), line
    assert zero.stdout == one.stdout == ""


def test_torchrun_stops_a_busy_peer_with_one_line(folder: Path) -> None:
    """Rank 0 is sleeping in its data factory when rank 1 fails: torchrun's SIGTERM ends it."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
        "-m", "hesscli", "trace", "net.pt", "--model", "model.py:Net", "--data",
        "model.py:data_slow_on_rank_zero", "--no-config", "--json",
    ]  # fmt: skip
    start = time.monotonic()
    proc = subprocess.run(
        command, cwd=folder, env=_env(), capture_output=True, text=True, timeout=240
    )
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert elapsed < 50, f"the busy rank was not stopped within seconds ({elapsed:.0f} s)"
    ours = [line for line in proc.stderr.splitlines() if "hesscli" in line and "error:" in line]
    ours = [line.split("]:", 1)[-1].strip() if line.startswith("[rank") else line for line in ours]
    assert any(
        line.startswith("hesscli (rank 1): error: ") and "shard file for rank 1" in line
        for line in ours
    ), proc.stderr[-3000:]
    assert any(line.startswith("hesscli: error: stopped by the launcher") for line in ours), (
        proc.stderr[-3000:]
    )
    assert len(ours) == 2, proc.stderr[-3000:]
    rank_tracebacks = [line for line in proc.stderr.splitlines() if line.startswith("[rank")]
    assert not any("Traceback" in line for line in rank_tracebacks), proc.stderr[-3000:]
    assert "Connection reset" not in proc.stderr
    assert proc.stdout == ""
