"""H·v and λmax on a GPU: hesscli's two routes against a gradient and against PyHessian.

Run by ``benchmarks/gpu_check.sh``; needs only torch, transformers (for ``bert_hf``; the plain
torch twin in ``sample_models/minilm/model.py`` needs nothing more) and PyHessian. The
three problems, float32, TF32 off for every tool (``hesscli.engine.precision.float32_precision``):

- ``bert`` and ``bert_hf``: MiniLM's configuration (``benchmarks/minilm_config.json``: 6
  layers, hidden 384, 12 heads, intermediate 1536, vocabulary 30,522; 22.7 M parameters) with
  random weights, scoring 32 random sentence pairs of up to 128 tokens by cosine similarity
  (mean squared error to a gold score); ``bert`` is the plain torch twin of
  ``sample_models/minilm/model.py`` (what the CLI step runs), ``bert_hf`` is
  ``transformers.BertModel`` built from the same configuration;
- ``cnn``: a ResNet-18-like network (BatchNorm in eval mode) on 128 random 32×32 images.

Measured per problem, each a median after a warm-up, with the device synchronised before every
timer read: one gradient (forward + backward, the unit); hesscli H·v by forward-over-reverse
and by reverse-over-reverse (steady calls on a kept operator, one column and 16 columns per
call); PyHessian's H·v with its graph kept; λmax to 1e-4 by hesscli (Lanczos, end to end with
its route check) and by PyHessian (power iteration, tol 1e-4), against a float64 hesscli
reference. ``--small`` (implied on the CPU) shrinks every problem for a dry run.

    python benchmarks/gpu_bench.py --device cuda --out results/
    python benchmarks/gpu_bench.py make-bert results/bert      # weights + hesscli.toml for the CLI
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hesscli.algorithms.eigen import extreme_eigenvalues
from hesscli.batches import Batch, Dataset
from hesscli.engine.device import synchronize
from hesscli.engine.functional import math_attention
from hesscli.engine.operator import CurvatureOperator
from hesscli.engine.precision import backend_settings, float32_precision

ROOT = Path(__file__).resolve().parent.parent
CONFIG = Path(__file__).with_name("minilm_config.json")
MINILM = ROOT / "sample_models" / "minilm"
#: What ``--small`` (the CPU dry run) changes in MiniLM's configuration.
SMALL_BERT = {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
              "intermediate_size": 128}  # fmt: skip
K = 16  # columns of the batched products


# -- problems ------------------------------------------------------------------------------------
def bert_kwargs(small: bool) -> dict[str, Any]:
    """``SentencePairs``/``transformers_pairs`` keyword arguments from the config file."""
    config = {**json.loads(CONFIG.read_text()), **(SMALL_BERT if small else {})}
    return {
        "vocab": config["vocab_size"], "hidden": config["hidden_size"],
        "layers": config["num_hidden_layers"], "heads": config["num_attention_heads"],
        "intermediate": config["intermediate_size"],
        "max_positions": config["max_position_embeddings"],
        "type_vocab": config["type_vocab_size"], "eps": config["layer_norm_eps"],
        "pad_id": config["pad_token_id"],
    }  # fmt: skip


def _minilm() -> Any:
    sys.path.insert(0, str(MINILM))
    try:
        import model as minilm  # sample_models/minilm/model.py
    finally:
        sys.path.pop(0)
    return minilm


def bert(small: bool, *, hf: bool = False) -> tuple[nn.Module, dict, torch.Tensor, str]:
    """Random-weight BERT on random pairs: (model, inputs, targets, which implementation).

    ``hf``: ``transformers.BertModel`` built from the configuration; else the plain torch
    twin of ``sample_models/minilm/model.py`` (same parameters, same function).
    """
    minilm, kwargs = _minilm(), bert_kwargs(small)
    torch.manual_seed(0)
    if hf:
        model, which = minilm.transformers_pairs(**kwargs), "transformers BertModel"
    else:
        model, which = minilm.SentencePairs(**kwargs), "plain torch BERT (minilm/model.py)"
    n, t = (2, 16) if small else (32, 128)
    g = torch.Generator().manual_seed(1)
    inputs: dict[str, torch.Tensor] = {}
    for side in "ab":
        ids = torch.randint(1000, kwargs["vocab"], (n, t), generator=g)
        lengths = torch.randint(t // 2, t + 1, (n, 1), generator=g)
        mask = (torch.arange(t)[None, :] < lengths).long()
        inputs[f"input_ids_{side}"], inputs[f"attention_mask_{side}"] = ids * mask, mask
    return model.eval(), inputs, torch.rand(n, generator=g), which


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet-18 for 32×32 images (CIFAR layout), in plain torch (no torchvision)."""

    def __init__(self, width: int = 64, blocks: tuple[int, ...] = (2, 2, 2, 2)) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())  # fmt: skip
        stages, cin = [], width
        for i, count in enumerate(blocks):
            cout = width * 2**i
            for j in range(count):
                stages.append(_Block(cin, cout, 2 if j == 0 and i > 0 else 1))
                cin = cout
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(cin, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, 32, 32)`` images → ``(N, 10)`` logits."""
        return self.fc(self.stages(self.stem(x)).mean(dim=(2, 3)))


def cnn(small: bool) -> tuple[nn.Module, torch.Tensor, torch.Tensor, str]:
    """ResNet-18-like CNN on random images: (model, inputs, targets, description)."""
    torch.manual_seed(0)
    width, blocks, n, side = (8, (1, 1), 4, 16) if small else (64, (2, 2, 2, 2), 128, 32)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(n, 3, side, side, generator=g), torch.randint(0, 10, (n,), generator=g)
    return ResNet(width, blocks).eval(), x, y, f"ResNet width {width}, blocks {blocks}"


# -- measurement ---------------------------------------------------------------------------------
class _Packed(nn.Module):
    """One-tensor forward for PyHessian (it calls ``model(inputs)``): pairs stacked on dim 1."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x[:, 0], x[:, 1], x[:, 2], x[:, 3])


def median_seconds(call: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median wall time of ``call()`` after one warm-up (the device synchronised each time)."""
    times = []
    for _ in range(repeats + 1):
        synchronize(device)
        start = time.perf_counter()
        call()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


class Bench:
    """Every measurement of one problem; a failing one is recorded and the others go on."""

    def __init__(self, name: str, problem: tuple, device: torch.device, repeats: int) -> None:
        model, inputs, targets, self.description = problem
        self.device, self.repeats, self.results = device, repeats, {"problem": name}
        self.loss = F.mse_loss if name.startswith("bert") else F.cross_entropy
        #: hesscli's loss: ``loss(outputs, targets)``, the mean over the batch.
        self.loss_fn = self.loss
        self.model = model.to(device)
        move = lambda t: t.to(device)  # noqa: E731
        self.inputs = (
            {k: move(v) for k, v in inputs.items()} if isinstance(inputs, dict) else move(inputs)
        )
        self.targets = move(targets)
        self.data = Dataset((Batch(self.inputs, self.targets),), name, "memory", len(targets))
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.results.update(description=self.description, samples=len(targets),
                            parameters=sum(p.numel() for p in self.params))  # fmt: skip

    def forward(self) -> torch.Tensor:
        """The mean loss of the whole batch (what a gradient differentiates)."""
        inputs = self.inputs
        out = self.model(**inputs) if isinstance(inputs, dict) else self.model(inputs)
        return self.loss(out, self.targets)

    def op(self, method: str, **options: Any) -> CurvatureOperator:
        """A hesscli operator over the whole batch (one micro-batch) by ``method``."""
        return CurvatureOperator(self.model, self.data, self.loss_fn, method=method,
                                 micro_batch=len(self.targets), **options)  # fmt: skip

    def record(self, key: str, measure: Callable[[], Any]) -> None:
        """Store ``measure()`` under ``key``, or its error; print it either way."""
        try:
            self.results[key] = measure()
        except Exception as exc:  # recorded; the next measurement still runs
            self.results[key] = {"error": f"{type(exc).__name__}: {exc}"[:400]}
            traceback.print_exc(file=sys.stderr)
        print(f"  {key}: {json.dumps(self.results[key])[:300]}", flush=True)

    def run(self) -> dict[str, Any]:
        """Every measurement, then the H·v ÷ gradient ratios."""
        grad = lambda: torch.autograd.grad(self.forward(), self.params)  # noqa: E731
        self.record("gradient_s", lambda: median_seconds(grad, self.device, self.repeats))
        for route in ("forward", "reverse"):
            self.record(f"hv_{route}", lambda r=route: self._route(r))
        self.record("hv_pyhessian", self._pyhessian_hv)
        self.record("lambda_max", self._lambda_max)
        unit = self.results.get("gradient_s")
        for key in ("hv_forward", "hv_reverse", "hv_pyhessian"):
            entry = self.results.get(key)
            if isinstance(unit, float) and isinstance(entry, dict) and "hv_s" in entry:
                entry["hv_over_gradient"] = entry["hv_s"] / unit
                if "hv_k16_s" in entry:
                    entry["hv_k16_per_column_over_gradient"] = entry["hv_k16_s"] / K / unit
        return self.results

    def _vector(self, columns: int) -> torch.Tensor:
        op = self.op("reverse", verify=False)
        g = torch.Generator().manual_seed(2)
        return torch.randn(op.size, columns, generator=g).to(self.device)

    def _route(self, route: str) -> dict[str, Any]:
        op = self.op(route, verify=False)
        v, V = self._vector(1), self._vector(K)
        start = time.perf_counter()
        op.matmat(v)  # first call: builds (and for reverse, caches) the gradient graph
        synchronize(self.device)
        first = time.perf_counter() - start
        out = {"first_s": first, "hv_s": median_seconds(lambda: op.matmat(v), self.device,
                                                        self.repeats)}  # fmt: skip
        out["hv_k16_s"] = median_seconds(
            lambda: op.matmat(V), self.device, max(2, self.repeats // 2)
        )
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            op.matmat(V)
            out["peak_k16_bytes"] = torch.cuda.max_memory_allocated(self.device)
        return out

    def _pyhessian(self) -> Any:
        from pyhessian import hessian as PyHessian  # GPL: imported and called, never copied

        model = self.model
        if isinstance(self.inputs, dict):
            i = self.inputs
            stacked = torch.stack([i["input_ids_a"], i["attention_mask_a"],
                                   i["input_ids_b"], i["attention_mask_b"]], dim=1)  # fmt: skip
            model, data = _Packed(self.model), (stacked, self.targets)
        else:
            data = (self.inputs, self.targets)
        model.zero_grad(set_to_none=True)
        with math_attention():  # the fused attention kernels have no double backward
            return PyHessian(model, self.loss, data=data, cuda=self.device.type == "cuda")

    def _pyhessian_hv(self) -> dict[str, Any]:
        from pyhessian.utils import hessian_vector_product

        h = self._pyhessian()
        v = [torch.randn_like(p) for p in h.params]
        out = {"hv_s": median_seconds(lambda: hessian_vector_product(h.gradsH, h.params, v),
                                      self.device, self.repeats)}  # fmt: skip
        self.model.zero_grad(set_to_none=True)
        return out

    def _lambda_max(self) -> dict[str, Any]:
        """λmax to 1e-4: hesscli (Lanczos) and PyHessian (power iteration), float64 reference.

        Power iteration converges to the eigenvalue of largest magnitude, which on random
        weights is often the most negative one: PyHessian is judged against that one.
        """

        def ours(dtype: torch.dtype, tol: float, bottom_k: int) -> tuple[Any, float, int]:
            model = self.model.to(dtype)
            op = CurvatureOperator(model, self.data, self.loss_fn, micro_batch=len(self.targets))
            synchronize(self.device)
            start = time.perf_counter()
            (found,) = extreme_eigenvalues(op.matmat, op.size, top_k=1, bottom_k=bottom_k,
                                           tol=tol, dtype=dtype, device=self.device,
                                           generator=torch.Generator().manual_seed(0))  # fmt: skip
            synchronize(self.device)
            seconds = time.perf_counter() - start
            self.model.float()
            return found, seconds, op.counters.products + op.counters.check_products

        reference = ours(torch.float64, 1e-10, 1)[0]
        top, bottom = reference.top[0].value, reference.bottom[0].value
        dominant = top if abs(top) >= abs(bottom) else bottom
        found, seconds, products = ours(torch.float32, 1e-4, 0)
        value = found.top[0].value
        synchronize(self.device)
        start = time.perf_counter()
        h = self._pyhessian()
        (peer,), _ = h.eigenvalues(maxIter=100, tol=1e-4, top_n=1)
        synchronize(self.device)
        peer_seconds = time.perf_counter() - start
        self.model.zero_grad(set_to_none=True)
        return {
            "reference_float64": {"top": top, "bottom": bottom},
            "hesscli": {"value": value, "seconds": seconds, "products": products,
                        "relative_error": abs(value - top) / abs(top)},
            "pyhessian": {"value": peer, "seconds": peer_seconds, "target": dominant,
                          "relative_error": abs(peer - dominant) / abs(dominant)},
            "hesscli_over_pyhessian_time": seconds / peer_seconds,
        }  # fmt: skip


# -- the CLI's BERT ------------------------------------------------------------------------------
def make_bert(folder: Path, small: bool) -> None:
    """Random-weight ``SentencePairs`` (MiniLM's config) + a hesscli.toml using MiniLM's pairs."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    kwargs = bert_kwargs(small)
    torch.manual_seed(0)
    model = _minilm().SentencePairs(**kwargs)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              folder / "model.safetensors")  # fmt: skip
    table = "".join(f"{k} = {v}\n" for k, v in kwargs.items())
    (folder / "hesscli.toml").write_text(
        f'model = "{MINILM / "model.py"}:SentencePairs"\ndata = "{MINILM / "data.pt"}"\n'
        f'loss = "mse"\n\n[model_kwargs]\n{table}'
    )
    print(
        f"wrote {folder}/model.safetensors and hesscli.toml ({'small' if small else 'full'} size)"
    )


def main() -> None:
    if sys.argv[1:2] == ["make-bert"]:
        make_bert(Path(sys.argv[2]), "--small" in sys.argv)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", default="bert,bert_hf,cnn")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--small", action="store_true", help="dry-run sizes (implied on the CPU)")
    args = parser.parse_args()
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    small = args.small or device.type == "cpu"
    if small:
        print("small sizes (CPU dry run): the figures are not the GPU's", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    problems = {"bert": bert, "bert_hf": lambda small: bert(small, hf=True), "cnn": cnn}
    with float32_precision():  # TF32 off for every tool, hesscli's and PyHessian's alike
        report: dict[str, Any] = {"device": str(device), "small": small,
                                  "precision": backend_settings()}  # fmt: skip
        if use_cuda:
            report["gpu"] = torch.cuda.get_device_name(device)
        for name in args.models.split(","):
            print(f"{name}:", flush=True)
            try:
                bench = Bench(name, problems[name](small), device, args.repeats)
                report[name] = bench.run()
            except Exception as exc:
                report[name] = {"error": f"{type(exc).__name__}: {exc}"[:400]}
                traceback.print_exc(file=sys.stderr)
            (args.out / "bench.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out / 'bench.json'}")


if __name__ == "__main__":
    main()
