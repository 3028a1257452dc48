"""Memory: ``--max-memory`` sizes, the memory plan, the bytes autograd saves per sample, and the
out-of-memory retry (vmap chunk, then micro-batch) with its error when nothing smaller is left.

Running out of memory is injected as a fault of the *environment*, never by patching hesscli: a
model whose forward raises ``torch.OutOfMemoryError`` above a number of samples (a small
device), or a simulated allocator (a dispatch mode entered inside the model's forward, below
every torch.func transform) that refuses any tensor above a byte limit, so the batched tangent
activations of the forward route fail at large vmap chunks exactly as on a real device. Results
after a retry are compared with dense float64 Hessians built by double backward on all samples
at once (tests/dense.py), and with the same run without a memory limit.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from hesscli.batches import Batch, Dataset
from hesscli.engine import device_memory as memory
from hesscli.engine.device_memory import (
    automatic_budget,
    format_size,
    is_out_of_memory,
    parse_size,
)
from hesscli.engine.memory import SavedBytes, peak_estimate, plan_memory, sample_bytes
from hesscli.engine.operator import CurvatureOperator
from hesscli.engine.products import MicroBatchLoss
from hesscli.errors import ConfigError, MemoryLimitError
from hesscli.loading.losses import BUILTIN_LOSSES
from hesscli.runs.plans import PROBE_BATCH
from tests import dense

F64 = torch.float64
MSE = BUILTIN_LOSSES["mse"]
HIDDEN = 40
SAMPLES = 13
OOM_TEXT = "CUDA out of memory (simulated). Tried to allocate 2.00 GiB"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def warnings_(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch):
    """Warnings of the ``hesscli`` logger, also after a CLI run in this process pointed it at
    its own stderr handler and stopped propagation."""
    logger = logging.getLogger("hesscli")
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logger, "propagate", True)
    caplog.set_level(logging.WARNING, logger="hesscli")
    return caplog


# -- models and data ---------------------------------------------------------------------------
def _mlp(hidden: int = HIDDEN, dtype: torch.dtype = F64) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, hidden), nn.Tanh(), nn.Linear(hidden, 2)).to(dtype).eval()


def _data(samples: int = SAMPLES, dtype: torch.dtype = F64) -> Dataset:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(samples, 3, generator=generator, dtype=dtype)
    y = torch.randn(samples, 2, generator=generator, dtype=dtype)
    return Dataset((Batch(x, y),), "memory", "memory", samples)


class _SmallDevice(nn.Module):
    """Environment fault: a device on which a forward over more than ``limit`` samples runs out
    of memory (``None``: no limit)."""

    def __init__(self, limit: int | None) -> None:
        super().__init__()
        self.net = _mlp()
        self.limit = limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.limit is not None and x.shape[0] > self.limit:
            raise torch.OutOfMemoryError(OOM_TEXT)
        return self.net(x)


class _Allocator(TorchDispatchMode):
    """Environment fault: an allocator that refuses any single tensor above ``limit`` bytes.

    Entered inside the model's forward, it sits below vmap, jvp and grad, so it sees the real
    (physically batched) tensors: a forward-route chunk of c columns over b samples allocates
    tangent activations of c·b·hidden values.
    """

    def __init__(self, limit: float) -> None:
        super().__init__()
        self.limit = limit
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                size = tensor.numel() * tensor.element_size()
                self.largest = max(self.largest, size)
                if size > self.limit:
                    raise torch.OutOfMemoryError(f"{OOM_TEXT} ({size} bytes)")
        return out


class _CappedDevice(nn.Module):
    """The MLP on a device whose allocator refuses tensors above a byte limit."""

    def __init__(self, allocator: _Allocator) -> None:
        super().__init__()
        self.net = _mlp()
        self.allocator = allocator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.allocator:
            return self.net(x)


def _truth(op: CurvatureOperator, data: Dataset) -> torch.Tensor:
    """Dense Hessian by double backward over all samples at once, with no memory limit."""
    model = _SmallDevice(None)
    names = list(op.layout.names)
    batch = data.first
    loss = dense.loss_at(model, names, batch.inputs, batch.targets, MSE)
    return dense.dense_hessian(loss, dense.flat_parameters(model, names))


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "hesscli"]


# -- sizes -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8GiB", 8 * 2**30),
        ("8G", 8 * 2**30),
        ("8GB", 8 * 10**9),
        ("512MB", 512 * 10**6),
        ("512MiB", 512 * 2**20),
        ("1.5GiB", 3 * 2**29),
        ("1000", 1000),
        ("64kib", 64 * 1024),
        (" 2 TB ", 2 * 10**12),
        ("0.5G", 2**29),
    ],
)
def test_parse_size_reads_binary_and_decimal_units(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text", ["banana", "", "8XB", "-1GB", "0", "0GiB", "1.5.2G", "GB", "8 G B", "1e9", "nan"]
)
def test_parse_size_rejects_what_is_not_a_size(text):
    with pytest.raises(ConfigError, match=r"--max-memory .* is not a memory size"):
        parse_size(text)


@pytest.mark.parametrize("size", [1, 1023, 1024, 5000, 3 * 2**29, 123_456_789, 900 * 2**30])
def test_format_size_reads_back_to_three_digits(size):
    assert abs(parse_size(format_size(size)) - size) <= 0.005 * size


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB"), True),
        (MemoryError(), True),
        (RuntimeError("CUDA error: out of memory"), True),
        (
            RuntimeError(
                "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate "
                "memory: you tried to allocate 1099511627776 bytes."
            ),
            True,
        ),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x3 and 5x2)"), False),
        (ValueError("expected a tensor"), False),
    ],
)
def test_is_out_of_memory(exc, expected):
    assert is_out_of_memory(exc) is expected


def test_automatic_budget_is_a_share_of_the_total_memory_split_between_local_ranks(monkeypatch):
    # The environment: 8 GiB in all, one then four processes on this machine. What is free at
    # the moment does not enter: the budget sizes micro-batches, which decide the bits.
    monkeypatch.setattr(memory, "total_bytes", lambda device: 8 * 2**30)
    monkeypatch.setattr(memory, "free_bytes", lambda device: 1)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert automatic_budget(torch.device("cpu")) == 4 * 2**30  # half on the CPU
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert automatic_budget(torch.device("cpu")) == 2**30


def test_a_run_larger_than_the_free_memory_is_refused_up_front(monkeypatch):
    monkeypatch.setattr(memory, "free_bytes", lambda device: 3 * 2**30)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    memory.check_free(2 * 2**30, torch.device("cpu"), source="--max-memory")
    with pytest.raises(MemoryLimitError, match=r"needs about 4 GiB.*only 3 GiB is free") as info:
        memory.check_free(4 * 2**30, torch.device("cpu"), source="--max-memory")
    assert "--max-memory 3GiB" in info.value.one_line()


def test_cli_rejects_a_bad_max_memory_in_one_line(cli, samples, monkeypatch):
    monkeypatch.chdir(samples / "digits_mlp")
    for value in ("banana", "0"):
        result = cli("info", "model.safetensors", "--max-memory", value)
        context = f"exit {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        assert result.exit_code == 2, context
        assert result.stdout == "", context
        assert "Traceback" not in result.output, context
        lines = result.stderr.splitlines()
        assert len(lines) == 1, context
        assert lines[0].startswith("hesscli: error: --max-memory"), context
        assert repr(value) in lines[0], context


# -- what a sample costs -----------------------------------------------------------------------
def test_saved_bytes_counts_each_storage_once():
    x = torch.randn(100, dtype=F64, requires_grad=True)
    with SavedBytes() as saved:
        (x * x).sum()  # mul saves x twice: one storage
    assert saved.total == 100 * 8
    with SavedBytes() as saved:
        (x * x).exp().sum()  # and exp saves its (new) result
    assert saved.total == 2 * 100 * 8


def _per_sample(hidden: int, dtype: torch.dtype = F64, samples: int = 64) -> int:
    net = _mlp(hidden, dtype)
    data = _data(samples, dtype)
    variables = {n: p.detach() for n, p in net.named_parameters()}
    return sample_bytes(MicroBatchLoss(net, MSE, data.first, variables, {}), samples)


def test_sample_bytes_grows_linearly_with_the_activations():
    widths = (16, 64, 256, 1024)
    measured = [_per_sample(h) for h in widths]
    assert measured == sorted(measured) and len(set(measured)) == len(measured), measured
    # Autograd keeps the tanh output (hidden values) of every sample: at least 8 bytes per
    # hidden unit in float64, and no more than a few copies of it.
    for width, value in zip(widths, measured, strict=True):
        assert 8 * width <= value <= 4 * 8 * width + 256, (width, value)
    # Linear: the same cost per added hidden unit across the range (to 5 %).
    slopes = [
        (measured[i + 1] - measured[i]) / (widths[i + 1] - widths[i])
        for i in range(len(widths) - 1)
    ]
    assert max(slopes) <= 1.05 * min(slopes), slopes
    # Half the bytes in float32; independent of the samples used to measure.
    assert _per_sample(256, torch.float32) * 2 == measured[2]
    assert _per_sample(256, samples=20) == measured[2]


# -- the plan ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def planned() -> MicroBatchLoss:
    """64 samples of a 3→64→2 float64 MLP."""
    net = _mlp(64)
    data = _data(64)
    variables = {n: p.detach() for n, p in net.named_parameters()}
    return MicroBatchLoss(net, MSE, data.first, variables, {})


def _plan(
    mb: MicroBatchLoss,
    budget: int,
    *,
    micro_batch: int = 512,
    fixed: bool = False,
    source: str = "--max-memory",
):
    return plan_memory(
        mb,
        budget=budget,
        source=source,
        micro_batch=micro_batch,
        chunk_size=16,
        fixed_micro_batch=fixed,
        samples=64,
    )


def test_plan_fits_the_budget_and_is_as_large_as_fits(planned):
    params = (3 * 64 + 64 + 64 * 2 + 2) * 8
    per_sample = _plan(planned, 2**40).sample_bytes
    least, most = peak_estimate(params, per_sample, 1, 1), peak_estimate(params, per_sample, 64, 16)
    four_columns = peak_estimate(params, per_sample, 1, 4)
    regimes = set()
    for step in range(49):
        budget = int(least * (1.2 * most / least) ** (step / 48))
        plan = _plan(planned, budget)
        b, c = plan.micro_batch, plan.chunk_size
        where = f"budget {budget}: micro-batch {b}, chunk {c}"
        assert plan.parameter_bytes == params, where
        assert plan.sample_bytes == per_sample, where
        assert plan.budget == budget and plan.source == "--max-memory", where
        assert 1 <= b <= 64 and 1 <= c <= 16, where  # never more than asked (64 samples exist)
        assert plan.estimate == peak_estimate(params, per_sample, b, c) <= budget, where
        # As large as fits: doubling the chunk would not fit (or it is the one asked) ...
        assert c == 16 or peak_estimate(params, per_sample, b, 2 * c) > budget, where
        # ... nor would doubling the micro-batch (also below 4 columns, where a smaller chunk
        # leaves room for more samples).
        assert b == 64 or peak_estimate(params, per_sample, 2 * b, c) > budget, where
        assert budget >= four_columns or c < 4, where
        regimes.add((b == 64, c == 16))
    # The sweep reached all three: everything as asked, a smaller chunk, a smaller micro-batch.
    assert regimes == {(True, True), (True, False), (False, False)}


def test_plan_below_the_smallest_run(planned, warnings_):
    small = _plan(planned, 2**40)
    least = peak_estimate(small.parameter_bytes, small.sample_bytes, 1, 1)
    with pytest.raises(MemoryLimitError, match=r"--max-memory .* is below") as caught:
        _plan(planned, least - 1)
    assert "raise --max-memory" in str(caught.value)
    assert _plan(planned, least).estimate == least  # exactly enough is enough
    # Without an explicit budget the run goes ahead at its smallest, with a warning.
    plan = _plan(planned, least - 1, source="automatic: half of the free memory")
    assert (plan.micro_batch, plan.chunk_size) == (1, 1)
    assert any("may not fit in memory" in m for m in _messages(warnings_))


def test_plan_keeps_a_fixed_micro_batch(planned):
    free = _plan(planned, 2**40)
    params, per_sample = free.parameter_bytes, free.sample_bytes
    budget = peak_estimate(params, per_sample, 32, 2)
    # Free to choose, the plan keeps 4 columns and shrinks the micro-batch instead ...
    assert _plan(planned, budget, micro_batch=32).micro_batch < 32
    # ... but a micro-batch the user fixed stays, and only the chunk adapts.
    plan = _plan(planned, budget, micro_batch=32, fixed=True)
    assert (plan.micro_batch, plan.chunk_size) == (32, 2)
    assert plan.estimate <= budget
    with pytest.raises(MemoryLimitError, match=r"drop --micro-batch"):
        _plan(planned, peak_estimate(params, per_sample, 32, 1) - 1, micro_batch=32, fixed=True)


def test_a_fixed_micro_batch_larger_than_the_data_is_planned_at_the_data(planned):
    small = _plan(planned, 2**40)
    budget = peak_estimate(small.parameter_bytes, small.sample_bytes, 64, 1)
    plan = _plan(planned, budget, micro_batch=4096, fixed=True)  # 64 samples exist
    assert (plan.micro_batch, plan.chunk_size) == (64, 1)


# -- running out anyway: the retry -------------------------------------------------------------
def test_out_of_memory_halves_the_micro_batch_until_it_fits(warnings_):
    data = _data()
    op = CurvatureOperator(_SmallDevice(limit=4), data, MSE, micro_batch=16)
    actual = op.dense()
    free = CurvatureOperator(_SmallDevice(None), data, MSE, micro_batch=16)
    expected = free.dense()
    assert free.micro_batch == 16 and free.num_micro_batches == 1
    assert op.micro_batch <= 4 and op.num_micro_batches >= 4
    assert dense.relative(actual, expected) < 1e-12, dense.worst(actual, expected)
    truth = _truth(op, data)
    assert dense.relative(actual, truth) < 1e-10, dense.worst(actual, truth)
    retries = [m for m in _messages(warnings_) if m.startswith("out of memory on cpu")]
    assert any("retrying with micro-batches of" in m for m in retries), retries
    assert f"micro-batches of {op.micro_batch}" in retries[-1], retries


@pytest.mark.parametrize(
    ("limit", "chunk", "micro_batch"),
    [
        # Tangent activations of 4 columns over all 13 samples fit; 8 columns do not.
        pytest.param(4 * SAMPLES * HIDDEN * 8, 4, 16, id="chunk"),
        # Not even one column over 13 samples: the chunk goes to 1, then the micro-batch.
        pytest.param(4 * HIDDEN * 8, 1, 4, id="chunk-then-micro-batch"),
    ],
)
def test_out_of_memory_in_the_forward_route_halves_the_vmap_chunk_first(
    warnings_, limit, chunk, micro_batch
):
    data = _data()
    unlimited = _Allocator(float("inf"))
    free = CurvatureOperator(_CappedDevice(unlimited), data, MSE, method="forward", micro_batch=16)
    expected = free.dense()
    # Guard on the fault injection: unchunked, this run allocates more than the limit.
    assert free.chunk_size == 16 and unlimited.largest > limit
    warnings_.clear()
    op = CurvatureOperator(
        _CappedDevice(_Allocator(limit)), data, MSE, method="forward", micro_batch=16
    )
    actual = op.dense()
    assert op.route.route == "forward-over-reverse"
    assert op.chunk_size == chunk < 16
    assert op.micro_batch <= micro_batch
    retries = _messages(warnings_)
    assert retries and all(m.startswith("out of memory on cpu; retrying with") for m in retries)
    assert "columns per vmap call" in retries[0], retries  # the chunk goes first
    if micro_batch == 16:
        assert not any("micro-batches" in m for m in retries), retries
    assert dense.relative(actual, expected) < 1e-12, dense.worst(actual, expected)
    truth = _truth(op, data)
    assert dense.relative(actual, truth) < 1e-10, dense.worst(actual, truth)


def test_out_of_memory_that_never_goes_away_names_what_to_change(warnings_):
    op = CurvatureOperator(_SmallDevice(limit=0), _data(), MSE, micro_batch=16)
    with pytest.raises(MemoryLimitError) as caught:
        op.matvec(torch.ones(op.size, dtype=F64))
    message = str(caught.value)
    assert "out of memory on cpu even with one sample per micro-batch" in message
    assert OOM_TEXT in message  # what the device said
    for option in ("--dtype float32", "--layer"):
        assert option in message, message
    assert isinstance(caught.value.__cause__, torch.OutOfMemoryError)
    # auto takes double backward, one column at a time: only the micro-batch can shrink.
    assert op.micro_batch == 1
    assert len(_messages(warnings_)) >= 4  # every smaller size was tried first


def test_other_errors_are_not_retried(warnings_):
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 2).double()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (13x3 and 5x2)")

    op = CurvatureOperator(Broken(), _data(), MSE, micro_batch=16)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied") as caught:
        op.matvec(torch.ones(op.size, dtype=F64))
    assert not isinstance(caught.value, MemoryLimitError)
    assert (op.micro_batch, op.chunk_size) == (16, 16)
    assert _messages(warnings_) == []


# The device runs forward passes and first-order backward passes, but building a gradient
# graph for second derivatives (a backward with grad mode on) exhausts it. A forward-only fault
# would hit the memory measurement first; see the report.
_HUNGRY_MODEL = """
import torch
from torch import nn


class _SecondOrder(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        if torch.is_grad_enabled():
            raise torch.OutOfMemoryError("CUDA out of memory (simulated). Tried to allocate 2 GiB")
        return grad

    @staticmethod
    def jvp(ctx, tangent):
        return tangent


class Hungry(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return _SecondOrder.apply(self.fc(x).tanh())
"""


def test_cli_out_of_memory_at_every_size_is_one_error_line(cli, tmp_path, monkeypatch):
    (tmp_path / "model.py").write_text(_HUNGRY_MODEL, encoding="utf-8")
    (tmp_path / "hesscli.toml").write_text(
        'model = "model.py:Hungry"\ndata = "data.pt"\nloss = "mse"\n', encoding="utf-8"
    )
    torch.manual_seed(0)
    state = {f"fc.{name}": value for name, value in nn.Linear(3, 2).state_dict().items()}
    torch.save(state, tmp_path / "model.pt")
    generator = torch.Generator().manual_seed(0)
    torch.save(
        {"inputs": torch.randn(6, 3, generator=generator), "targets": torch.randn(6, 2)},
        tmp_path / "data.pt",
    )
    monkeypatch.chdir(tmp_path)
    result = cli("spectrum", "model.pt", "--top-k", "1", "--bottom-k", "0", "--json")
    context = f"exit {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.exit_code == 2, context
    assert result.exception is None or isinstance(result.exception, SystemExit), context
    assert "Traceback" not in result.output, context
    assert result.stdout == "", context
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("hesscli: error:")]
    assert len(errors) == 1 and errors[0] == lines[-1], context
    assert "out of memory on cpu even with one sample per micro-batch" in errors[0], context
    assert "--layer" in errors[0] and "--dtype float32" in errors[0], context
    # Everything before it is the retries, one line each.
    assert all("retrying with" in line for line in lines[:-1]), context


# -- --max-memory end to end -------------------------------------------------------------------
def _run(cli, *args: str) -> tuple[dict, str]:
    result = cli("trace", "model.safetensors", "--method", "exact", "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), result.stderr


def test_max_memory_shrinks_the_micro_batch_not_the_results(cli, samples, monkeypatch):
    monkeypatch.chdir(samples / "digits_mlp")
    # 250 samples: micro-batches that halve from 250 are uneven (63 + 63 + 63 + 61).
    common = ("--dtype", "float64", "--max-samples", "250")
    free, _ = _run(cli, *common)
    settings = free["settings"]
    assert settings["memory"]["source"].startswith("automatic")
    assert settings["micro_batch"] == 250
    # A budget that fits a quarter of the samples on the double-backward route auto takes,
    # from this run's own numbers.
    params = free["inputs"]["trainable_parameters"] * 8
    per_sample = settings["memory"]["sample_bytes"]
    columns = PROBE_BATCH  # what trace plans a pass for
    budget = peak_estimate(params, per_sample, 63, 1, vmapped=False, columns=columns) + per_sample
    limited, stderr = _run(cli, *common, "--max-memory", str(budget))
    memory_use = limited["settings"]["memory"]
    micro_batch = limited["settings"]["micro_batch"]
    assert micro_batch < settings["micro_batch"]
    assert memory_use["source"] == "--max-memory" and memory_use["budget"] == budget
    assert memory_use["estimate"] <= budget
    assert f"memory plan: micro-batch {micro_batch}," in stderr, stderr
    assert "(--max-memory)" in stderr, stderr
    expected, actual = free["results"], limited["results"]
    for name, layer in expected["layers"].items():
        got = actual["layers"][name]["value"]
        assert abs(got - layer["value"]) <= 1e-10 * abs(layer["value"]), (name, got, layer)
    total = expected["trace"]["value"]
    assert abs(actual["trace"]["value"] - total) <= 1e-10 * abs(total)


class _Gradient(torch.autograd.Function):
    """Identity whose backward always runs out, even for a plain gradient."""

    @staticmethod
    def forward(x):
        return x.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated). Tried to allocate 9 GiB")


_NO_BACKWARD_MODEL = """
import torch
from torch import nn
from tests.test_memory import _Gradient


class Starved(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return _Gradient.apply(self.fc(x))
"""


@pytest.mark.parametrize("command", [["info"], ["trace", "--method", "exact"]])
def test_out_of_memory_outside_the_products_is_one_error_line(cli, tmp_path, monkeypatch, command):
    # Even one backward runs out: the memory measurement, the gradient of `info` and the exact
    # diagonal each fail cleanly rather than with a traceback.
    (tmp_path / "model.py").write_text(_NO_BACKWARD_MODEL, encoding="utf-8")
    (tmp_path / "hesscli.toml").write_text(
        'model = "model.py:Starved"\ndata = "data.pt"\nloss = "mse"\n', encoding="utf-8"
    )
    state = {f"fc.{name}": value for name, value in nn.Linear(3, 2).state_dict().items()}
    torch.save(state, tmp_path / "model.pt")
    torch.save({"inputs": torch.randn(6, 3), "targets": torch.randn(6, 2)}, tmp_path / "data.pt")
    monkeypatch.chdir(tmp_path)
    result = cli(*command, "model.pt")
    context = f"exit {result.exit_code}\nstderr:\n{result.stderr}"
    assert result.exit_code == 2, context
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("hesscli: error:"), context
    assert "out of memory" in lines[0], context


# -- the algorithm's vectors are in the plan too ------------------------------------------------
def _spectrum(cli, *args: str) -> tuple[dict, str]:
    result = cli(
        "spectrum", "model.safetensors", "--dtype", "float64", "--top-k", "2", "--json", *args
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), result.stderr


def test_a_budget_too_small_for_the_lanczos_basis_thick_restarts_to_the_same_values(
    cli, samples, monkeypatch
):
    monkeypatch.chdir(samples / "digits_mlp")
    free, _ = _spectrum(cli)
    plan = free["settings"]["memory"]
    vector = free["inputs"]["trainable_parameters"] * 8
    assert plan["reserve"] >= (free["results"]["steps"] + 1) * vector  # the whole basis
    # Room for 24 vectors beside the products (the Ritz vectors and the step's product take
    # some): the basis cannot hold every step.
    assert free["results"]["steps"] > 24
    budget = plan["estimate"] + 24 * vector
    bounded, stderr = _spectrum(cli, "--max-memory", str(budget))
    limited = bounded["settings"]["memory"]
    assert limited["estimate"] + limited["reserve"] <= budget
    assert "thick restarts beyond them" in stderr, stderr
    for side in ("top", "bottom"):
        for got, want in zip(bounded["results"][side], free["results"][side], strict=True):
            assert got["converged"] and want["converged"]
            assert abs(got["value"] - want["value"]) <= 1e-7 * abs(
                free["results"]["top"][0]["value"]
            )


def test_a_budget_too_small_for_even_the_wanted_ritz_vectors_is_one_line(cli, samples, monkeypatch):
    monkeypatch.chdir(samples / "digits_mlp")
    free, _ = _spectrum(cli)
    vector = free["inputs"]["trainable_parameters"] * 8
    budget = free["settings"]["memory"]["estimate"] + 2 * vector
    result = cli(
        "spectrum",
        "model.safetensors",
        "--dtype",
        "float64",
        "--top-k",
        "2",
        "--json",
        "--max-memory",
        str(budget),
    )
    context = f"exit {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.exit_code == 2, context
    assert result.stdout == "", context
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Lanczos needs" in lines[0] and "--max-memory" in lines[0], context
