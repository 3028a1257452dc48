"""Same inputs and seed ⇒ the same bits, whatever the machine's timings and free memory.

The route is chosen by rule and the micro-batch from the budget (a share of the *total*
memory), so neither a clock nor a reading of the free memory can reach the numbers. Both are
faked here: every clock the run reads jumps by a different pseudo-random amount in each run, and
the second run sees barely more free memory than its plan needs (the old rule, half the free
memory, would have halved the micro-batch and changed the order of the sums).
"""

from __future__ import annotations

import json
import random
import time

import pytest

from hesscli.engine import device_memory as memory

ARGS = ("report", "model.safetensors", "--json", "--seed", "3", "--dtype", "float32")


def _fake_clock(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """A monotonic clock that jumps by 0–2 s per reading, differently for each seed."""
    jumps = random.Random(seed)
    now = [1000.0 * seed]

    def clock() -> float:
        now[0] += jumps.uniform(0.0, 2.0)
        return now[0]

    monkeypatch.setattr(time, "perf_counter", clock)
    monkeypatch.setattr(time, "monotonic", clock)


def _run(cli, monkeypatch: pytest.MonkeyPatch, *, free: int, seed: int) -> dict:
    with monkeypatch.context() as patched:
        patched.setattr(memory, "free_bytes", lambda device: free)
        _fake_clock(patched, seed)
        result = cli(*ARGS)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.usefixtures("one_thread")
def test_bit_identical_results_whatever_the_timings_and_free_memory(cli, samples, monkeypatch):
    monkeypatch.chdir(samples / "tiny_transformer")
    plenty = _run(cli, monkeypatch, free=64 << 30, seed=1)
    plan = plenty["settings"]["memory"]
    needed = plan["estimate"] + plan.get("reserve", 0)
    scarce = _run(cli, monkeypatch, free=needed + needed // 4, seed=2)
    assert scarce["settings"]["micro_batch"] == plenty["settings"]["micro_batch"]
    assert scarce["settings"]["memory"] == plan
    assert _numbers(scarce["results"]) == _numbers(plenty["results"])


def _numbers(results: dict) -> str:
    """The results as text, without the wall times they report (the fake clocks differ)."""
    timings = {"seconds", "pass_seconds"}

    def strip(value: object) -> object:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in timings}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return json.dumps(strip(results), sort_keys=True)


def test_a_plan_that_does_not_fit_the_free_memory_is_refused_in_one_line(cli, samples, monkeypatch):
    monkeypatch.chdir(samples / "tiny_transformer")
    monkeypatch.setattr(memory, "free_bytes", lambda device: 1000)
    result = cli(*ARGS)
    context = f"exit {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.exit_code == 2, context
    assert result.stdout == "", context
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, context
    assert "is free now" in lines[0] and "--max-memory" in lines[0], context
