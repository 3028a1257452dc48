"""Devices, precision and torchrun placement, tested on the CPU (GPU paths through fakes).

- ``--device``: ``auto`` picks CUDA when present; bad names and half dtypes are one line.
- Placement under torchrun: NCCL on ``cuda:LOCAL_RANK``, gloo on the CPU (pure logic, and
  ``join`` with a fake process group).
- True float32: the flags a loss function sees while hesscli computes (TF32 off, or on with
  ``--allow-tf32``), the caller's flags restored afterwards, and the JSON saying which.
- Probes: every random draw of a run comes from an explicit CPU generator, so the same seed
  gives the same probes whatever the device.
- Memory: a CUDA device's free memory is read from ``mem_get_info`` and not split between
  ranks that each have their own GPU.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import hesscli
from hesscli.algorithms.sketch import rademacher
from hesscli.engine import device_memory as memory
from hesscli.engine import distributed
from hesscli.engine.device import resolve_device, resolve_dtype
from hesscli.engine.distributed import placement
from hesscli.engine.precision import backend_settings, float32_precision
from hesscli.errors import DeviceError, DistributedError, MemoryLimitError
from tests.conftest import SAMPLES

SEED_ANN = SAMPLES / "seed_ann"


# -- device and dtype resolution ----------------------------------------------------------------
def test_auto_picks_cuda_when_present(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device(" AUTO ") == torch.device("cuda")


def test_auto_falls_back_to_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")


def test_cuda_names_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="CUDA is not available on this machine"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(DeviceError, match=r"device cuda:2 does not exist: .* 2 CUDA device"):
        resolve_device("cuda:2")
    with pytest.raises(DeviceError, match="unknown device 'gpu'"):
        resolve_device("gpu")


@pytest.mark.parametrize(
    ("name", "kind"),
    [("bfloat16", "bfloat16"), ("BF16", "bfloat16"), ("float16", "float16"), ("half", "float16")],
)
def test_half_precision_is_refused_with_why(name: str, kind: str) -> None:
    with pytest.raises(DeviceError) as caught:
        resolve_dtype(name, torch.device("cpu"))
    line = caught.value.one_line()
    assert f"--dtype {kind} is not supported" in line
    assert "significant digits" in line and "Lanczos" in line
    assert "use --dtype float32" in line and "\n" not in line


def test_dtypes_resolve_and_unknown_ones_are_listed() -> None:
    assert resolve_dtype("float32", torch.device("cpu")) is torch.float32
    assert resolve_dtype(" Float64", torch.device("cpu")) is torch.float64
    with pytest.raises(DeviceError, match=r"unsupported dtype 'int8'.*float32, float64"):
        resolve_dtype("int8", torch.device("cpu"))


def test_a_half_dtype_from_the_python_api_is_one_error() -> None:
    with pytest.raises(DeviceError, match="--dtype float16 is not supported"):
        hesscli.curvature_operator(SEED_ANN / "model.safetensors", cwd=SEED_ANN, dtype="float16")


# -- torchrun placement -------------------------------------------------------------------------
@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A fake machine with two GPUs, launched as local rank 1 of 2."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    return monkeypatch


def test_cuda_ranks_use_nccl_on_their_own_gpu(two_gpus: pytest.MonkeyPatch) -> None:
    cuda1 = torch.device("cuda", 1)
    assert placement(torch.device("cuda")) == ("nccl", cuda1, cuda1)


def test_cpu_ranks_use_gloo(two_gpus: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    assert placement(cpu) == ("gloo", cpu, cpu)


def test_a_rank_without_a_gpu_of_its_own_is_refused(two_gpus: pytest.MonkeyPatch) -> None:
    two_gpus.setenv("LOCAL_RANK", "2")
    with pytest.raises(DistributedError, match=r"LOCAL_RANK=2 has no GPU.*--nproc-per-node 2"):
        placement(torch.device("cuda"))


def test_one_named_gpu_for_several_ranks_is_refused(two_gpus: pytest.MonkeyPatch) -> None:
    with pytest.raises(DistributedError, match=r"all 2 processes .* one GPU.*--device cuda"):
        placement(torch.device("cuda", 0))
    two_gpus.setenv("LOCAL_WORLD_SIZE", "1")  # one process per machine: its GPU as named
    assert placement(torch.device("cuda", 0))[1] == torch.device("cuda", 0)


def test_other_devices_and_bad_variables_are_refused(two_gpus: pytest.MonkeyPatch) -> None:
    with pytest.raises(DistributedError, match="CPU \\(gloo\\) or CUDA \\(nccl\\), not mps"):
        placement(torch.device("mps"))
    two_gpus.setenv("LOCAL_RANK", "one")
    with pytest.raises(DistributedError, match="LOCAL_RANK='one' is not an integer"):
        placement(torch.device("cuda"))


def test_join_starts_nccl_bound_to_the_ranks_gpu(two_gpus: pytest.MonkeyPatch) -> None:
    calls: dict[str, object] = {}
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        two_gpus.setenv(name, "1" if name != "MASTER_ADDR" else "localhost")
    two_gpus.setattr(torch.cuda, "set_device", lambda d: calls.setdefault("set_device", d))
    two_gpus.setattr(distributed.dist, "is_initialized", lambda: False)
    two_gpus.setattr(
        distributed.dist,
        "init_process_group",
        lambda backend, **kw: calls.update(backend=backend, **kw),
    )
    two_gpus.setattr(distributed.dist, "get_rank", lambda: 1)
    two_gpus.setattr(distributed.dist, "get_world_size", lambda: 2)
    two_gpus.setattr(distributed.atexit, "register", lambda f: None)
    group, device = distributed.join(torch.device("cuda"), None)
    cuda1 = torch.device("cuda", 1)
    assert device == cuda1 and group.backend == "nccl" and group.device == cuda1
    assert calls == {"set_device": cuda1, "backend": "nccl", "device_id": cuda1}
    assert (group.rank, group.world_size, group.active) == (1, 2, True)


# -- memory of a CUDA device --------------------------------------------------------------------
def test_cuda_free_memory_is_read_and_not_split_between_gpus(
    two_gpus: pytest.MonkeyPatch,
) -> None:
    gib = 1 << 30
    two_gpus.setattr(torch.cuda, "mem_get_info", lambda device=None: (3 * gib, 80 * gib))
    cuda = torch.device("cuda", 1)
    assert memory.free_bytes(cuda) == 3 * gib and memory.total_bytes(cuda) == 80 * gib
    assert memory.ranks_sharing(cuda) == 1  # each rank has its own GPU
    assert memory.ranks_sharing(torch.device("cpu")) == 2  # the CPU's memory is shared
    assert memory.automatic_budget(cuda) == int(80 * gib * memory.AUTOMATIC_SHARE["cuda"])
    memory.check_free(3 * gib, cuda, source="test")
    with pytest.raises(MemoryLimitError, match=r"only 3 GiB is free now.*--max-memory 3GiB"):
        memory.check_free(4 * gib, cuda, source="test")
    two_gpus.setenv("LOCAL_WORLD_SIZE", "4")  # four ranks on two GPUs: two share each
    assert memory.ranks_sharing(cuda) == 2


# -- true float32 -------------------------------------------------------------------------------
_RECORDING_LOSS = '''
import json
from pathlib import Path

import torch


def mse(outputs, targets):
    """Mean squared error that records the precision flags it is evaluated under."""
    seen = {
        "matmul": torch.backends.cuda.matmul.allow_tf32,
        "cudnn": torch.backends.cudnn.allow_tf32,
        "precision": torch.get_float32_matmul_precision(),
    }
    with open(Path(__file__).with_name("flags.jsonl"), "a") as out:
        out.write(json.dumps(seen) + "\\n")
    return (outputs - targets).square().mean()
'''


@pytest.fixture
def caller_uses_tf32() -> Iterator[None]:
    """The caller's own choice: TF32 on everywhere (as many training scripts set it)."""
    saved = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    yield
    torch.set_float32_matmul_precision(saved[0])
    torch.backends.cudnn.allow_tf32 = saved[1]


def _recording(tmp_path: Path) -> Path:
    (tmp_path / "loss.py").write_text(_RECORDING_LOSS, encoding="utf-8")
    return tmp_path / "flags.jsonl"


def _seen(flags: Path) -> list[dict]:
    lines = flags.read_text(encoding="utf-8").splitlines()
    flags.unlink()
    return [json.loads(line) for line in lines]


def _caller_flags() -> tuple[bool, bool, str]:
    return (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.get_float32_matmul_precision(),
    )


TRUE_FLOAT32 = {"matmul": False, "cudnn": False, "precision": "highest"}
TF32 = {"matmul": True, "cudnn": True, "precision": "high"}


@pytest.mark.usefixtures("caller_uses_tf32")
def test_cli_computes_in_true_float32_and_restores_the_callers_flags(cli, tmp_path) -> None:
    flags = _recording(tmp_path)
    args = ("trace", str(SEED_ANN / "model.safetensors"), "--loss", f"{tmp_path}/loss.py:mse")
    result = cli(*args, "--json")
    assert result.exit_code == 0, result.output
    seen = _seen(flags)
    assert len(seen) > 3 and all(s == TRUE_FLOAT32 for s in seen), seen
    precision = json.loads(result.stdout)["settings"]["precision"]
    assert precision == {
        "allow_tf32": False,
        "tf32": False,
        "float32_matmul_precision": "highest",
    }
    assert _caller_flags() == (True, True, "high")


@pytest.mark.usefixtures("caller_uses_tf32")
def test_allow_tf32_lets_the_products_use_it_and_the_json_says_so(cli, tmp_path) -> None:
    flags = _recording(tmp_path)
    args = ("trace", str(SEED_ANN / "model.safetensors"), "--loss", f"{tmp_path}/loss.py:mse")
    result = cli(*args, "--allow-tf32", "--json")
    assert result.exit_code == 0, result.output
    seen = _seen(flags)
    assert TF32 in seen and seen[-1] == TF32, seen  # the products (loading checks stay exact)
    report = json.loads(result.stdout)
    # Allowed, but on the CPU TF32 cannot change a number: the JSON says both.
    assert report["settings"]["precision"] == {
        "allow_tf32": True,
        "tf32": False,
        "float32_matmul_precision": "high",
    }
    assert report["settings"]["sources"]["allow_tf32"] == "option"
    assert _caller_flags() == (True, True, "high")


@pytest.mark.usefixtures("caller_uses_tf32")
def test_the_python_api_operator_computes_in_true_float32(tmp_path) -> None:
    flags = _recording(tmp_path)
    loss = f"{tmp_path}/loss.py:mse"
    op = hesscli.curvature_operator(SEED_ANN / "model.safetensors", cwd=SEED_ANN, loss=loss)
    _seen(flags)  # loading's own checks
    op.matvec(torch.ones(op.size))
    assert all(s == TRUE_FLOAT32 for s in _seen(flags))
    assert _caller_flags() == (True, True, "high")
    opted = hesscli.curvature_operator(
        SEED_ANN / "model.safetensors", cwd=SEED_ANN, loss=loss, allow_tf32=True
    )
    _seen(flags)
    opted.matvec(torch.ones(opted.size))
    assert all(s == TF32 for s in _seen(flags))
    assert _caller_flags() == (True, True, "high")


def test_float32_precision_restores_after_an_error_and_nests() -> None:
    before = backend_settings()
    seen = []

    def fail_inside() -> None:
        with float32_precision():
            with float32_precision(allow_tf32=True):
                seen.append(torch.get_float32_matmul_precision())
            seen.append(torch.get_float32_matmul_precision())
            seen.append(torch.backends.cudnn.allow_tf32)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_inside()
    assert seen == ["high", "highest", False]
    assert backend_settings() == before


# -- probes: the same on every device -----------------------------------------------------------
class _RandomDraws(TorchDispatchMode):
    """Records every random kernel of a run with the generator it was given.

    Draws of ``torch.nn.init`` are left out: they initialise a model whose weights the
    checkpoint then replaces, so they never reach a number.
    """

    def __init__(self) -> None:
        super().__init__()
        self.draws: list[tuple[str, torch.Generator | None]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if torch.Tag.nondeterministic_seeded in func.tags and not _initialising():
            self.draws.append((str(func), kwargs.get("generator")))
        return func(*args, **kwargs)


def _initialising() -> bool:
    return any(Path(f.filename).match("torch/nn/init.py") for f in traceback.extract_stack())


@pytest.mark.parametrize(
    "command",
    [
        ("spectrum", "--top-k", "2"),
        ("trace", "--method", "hutch++", "--products", "12"),
        ("diag", "--estimate", "--products", "40"),
        ("density", "--probes", "2", "--steps", "6"),
    ],
    ids=lambda c: c[0],
)
def test_every_random_draw_uses_an_explicit_cpu_generator(cli, command) -> None:
    """A CPU generator gives the same stream wherever its result goes: CPU and CUDA runs with
    the same seed start from the same probes. The global RNG (and a CUDA generator) would not."""
    checkpoint = str(SAMPLES / "digits_mlp" / "model.safetensors")
    with _RandomDraws() as recorder:
        result = cli(command[0], checkpoint, *command[1:], "--max-samples", "32", "--json")
    assert result.exit_code == 0, result.output
    assert recorder.draws, "the run drew no random numbers"
    for name, generator in recorder.draws:
        assert generator is not None, f"{name} drew from the global RNG"
        assert generator.device.type == "cpu", f"{name} drew on {generator.device}"


def test_rademacher_draws_on_the_cpu_whatever_the_target_device() -> None:
    first, second = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    on_cpu = rademacher(1000, 3, generator=first, like=torch.empty(0))
    elsewhere = rademacher(1000, 3, generator=second, like=torch.empty(0, device="meta"))
    assert elsewhere.device.type == "meta" and elsewhere.shape == on_cpu.shape
    assert torch.equal(first.get_state(), second.get_state())  # the same stream was consumed
    assert set(on_cpu.unique().tolist()) == {-1.0, 1.0}


@pytest.mark.device
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_probes_on_cuda_equal_the_cpu_ones() -> None:
    cpu = rademacher(4096, 4, generator=torch.Generator().manual_seed(1), like=torch.empty(0))
    cuda = rademacher(
        4096, 4, generator=torch.Generator().manual_seed(1), like=torch.empty(0, device="cuda")
    )
    assert torch.equal(cuda.cpu(), cpu)
