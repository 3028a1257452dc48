"""Rebuild every checkpoint, evaluation batch and config file under ``sample_models/``.

Run ``python sample_models/regenerate.py`` from anywhere (needs scikit-learn for the digits data
set, which ships with it, so nothing is downloaded). Everything is trained on the CPU in float32
with fixed seeds, one thread and deterministic algorithms, so two runs on the same machine and
library versions write byte-identical files. The model classes are imported from each folder's
``model.py``, so each definition exists once, exactly as hesscli will load it.

Each model gets the files its folder's README entry lists, plus a ``hesscli.toml`` with the
same defaults that are embedded in its ``.safetensors`` header. ``manifest.json`` records
parameter counts, the accuracy (or loss) reached on the shipped evaluation batch, and file sizes.

``--only NAME`` rebuilds one folder and rewrites only its manifest entry;
``--snapshots-only`` rewrites only the digits MLP's ``run/`` snapshots and its entry.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import sys
import time
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

sys.dont_write_bytecode = True  # keep __pycache__ folders out of the model folders

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import load_file, save_file, save_model  # noqa: E402
from torch import nn  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hesscli.loading.checkpoint import write_safetensors  # noqa: E402

#: Samples held out from the digits data set and shipped as the evaluation batch.
EVAL_SAMPLES = 256
#: Seed of the train/evaluation split of the digits data set.
SPLIT_SEED = 0
#: Seed of weight initialisation, dropout and mini-batch order.
TRAIN_SEED = 0
#: Epochs of Adam that train the digits MLP.
DIGITS_MLP_EPOCHS = 60
#: Epochs after which the digits MLP's weights are also saved to ``digits_mlp/run/`` (a
#: training trajectory for ``hesscli compare``); the last one is the shipped model itself.
SNAPSHOT_EPOCHS = (1, 5, 20, DIGITS_MLP_EPOCHS)

#: Called as ``snapshot(epoch, model)`` after each finished epoch (1-based) of training.
Snapshot = Callable[[int, nn.Module], None]


def configure_determinism() -> None:
    """Make CPU training reproducible: one thread, deterministic kernels, float32 default."""
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.set_default_dtype(torch.float32)


def seed_everything(seed: int) -> None:
    """Seed torch's and numpy's global generators (init, dropout, anything else global)."""
    torch.manual_seed(seed)
    np.random.seed(seed)


def load_model_class(folder: str, name: str) -> type[nn.Module]:
    """Import class ``name`` from ``sample_models/<folder>/model.py`` by file path.

    Loading by path (not as a package) mirrors how hesscli resolves ``model.py:Name``.
    """
    path = HERE / folder / "model.py"
    spec = importlib.util.spec_from_file_location(f"sample_models_{folder}_model", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """Return ``(all parameters, trainable parameters)`` of ``model``."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def write_toml(path: Path, defaults: Mapping[str, Any]) -> None:
    """Write hesscli defaults as TOML: scalars first, then one ``[table]`` per dict value."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)  # a JSON string of printable text is a TOML basic string
        raise TypeError(f"cannot write {v!r} to TOML")

    lines = [f"# hesscli defaults for this folder; written by {Path(__file__).name}."]
    lines += [f"{k} = {value(v)}" for k, v in defaults.items() if not isinstance(v, Mapping)]
    for key, table in defaults.items():
        if isinstance(table, Mapping):
            lines += ["", f"[{key}]", *(f"{k} = {value(v)}" for k, v in table.items())]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``arrays`` in ``np.savez`` layout, but with fixed zip timestamps.

    ``np.savez`` stamps each member with the current time, which would make the file differ
    from run to run; ``np.load`` reads this file exactly like a ``np.savez`` one.
    """
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            archive.writestr(info, buffer.getvalue())


def check_reload(what: str, saved: object, reloaded: object) -> None:
    """Fail loudly unless a result recomputed from the written files equals the original."""
    if saved != reloaded:
        raise RuntimeError(f"{what}: {reloaded} from the written files, {saved} before saving")


def file_sizes(folder: Path) -> dict[str, int]:
    """Sizes in bytes of the files under ``folder``; also makes them world-readable.

    Files in subfolders (``run/``) are named by their relative POSIX path. (safetensors
    creates its files with mode 0600, unlike ``torch.save`` and ``open``.)
    """
    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and "__pycache__" not in p.parts]
    for path in files:
        path.chmod(0o644)
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in files}


@torch.no_grad()
def evaluate(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    """Return ``(accuracy, mean cross-entropy)`` of ``model`` in eval mode on one batch."""
    model.eval()
    logits = model(inputs)
    accuracy = (logits.argmax(dim=1) == targets).double().mean().item()
    return accuracy, F.cross_entropy(logits, targets).item()


def train_classifier(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int = 64,
    weight_decay: float = 0.0,
    snapshot: Snapshot | None = None,
) -> torch.optim.Optimizer:
    """Train ``model`` with Adam and cross-entropy on shuffled mini-batches.

    The batch order comes from a seeded generator, so it does not depend on anything else
    that draws from torch's global generator.

    Args:
        model: The model, trained in place.
        inputs: Training inputs.
        targets: Training class indices.
        epochs: Passes over the training set; the learning rate decays to 0 over them (cosine).
        lr: Initial Adam learning rate.
        batch_size: Mini-batch size.
        weight_decay: Adam's L2 penalty.
        snapshot: Called after every epoch with its number (from 1) and the model. It must
            not draw random numbers or change the weights; it may switch the model to eval
            mode (each epoch switches back to training mode), so training is the same with or
            without it.

    Returns:
        The optimizer, whose state is saved with the digits MLP checkpoint.
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    order = torch.Generator().manual_seed(TRAIN_SEED)
    for epoch in range(1, epochs + 1):
        model.train()
        for batch in torch.randperm(len(targets), generator=order).split(batch_size):
            loss = F.cross_entropy(model(inputs[batch]), targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
        if snapshot is not None:
            snapshot(epoch, model)
    model.eval()
    return optimizer


def snapshot_writer(
    folder: Path, epochs: tuple[int, ...], inputs: torch.Tensor, targets: torch.Tensor
) -> tuple[Snapshot, list[dict[str, Any]]]:
    """A ``train_classifier`` snapshot callback saving the weights after the given epochs.

    Each snapshot is ``folder/epoch_<NN>.safetensors``: the plain state dict (same tensor names
    as the model's ``model.safetensors``) without hesscli metadata, since the model's code lies
    outside ``folder`` and metadata may only name code beside the checkpoint; the
    ``hesscli.toml`` of the model's folder supplies model, data and loss instead.

    Returns:
        The callback, and the list it fills with ``{"epoch", "file", "accuracy", "eval_loss"}``
        (measured in eval mode on ``inputs``, ``targets``) for each snapshot written.
    """
    folder.mkdir(exist_ok=True)
    written: list[dict[str, Any]] = []

    def snapshot(epoch: int, model: nn.Module) -> None:
        if epoch not in epochs:
            return
        path = folder / f"epoch_{epoch:02d}.safetensors"
        save_model(model, str(path), metadata={"format": "pt"})
        accuracy, eval_loss = evaluate(model, inputs, targets)
        written.append(
            {
                "epoch": epoch,
                "file": path.relative_to(folder.parent).as_posix(),
                "accuracy": accuracy,
                "eval_loss": eval_loss,
            }
        )
        print(
            f"  epoch {epoch:2d}: accuracy {accuracy:.2%}, eval loss {eval_loss:.4f} -> {path.name}"
        )

    return snapshot, written


def build_digits_mlp_snapshots(folder: Path) -> list[dict[str, Any]]:
    """Retrain the digits MLP exactly as :func:`build_digits_mlp` does, writing only ``run/``.

    Training is seeded the same way, so the snapshots are those of the shipped model's own
    run; the last epoch's snapshot is checked to hold the weights of ``model.safetensors``.
    Nothing else in ``folder`` is touched.
    """
    seed_everything(TRAIN_SEED)
    x_train, y_train, x_eval, y_eval = digits_split()
    model = load_model_class(folder.name, "DigitsMLP")(hidden=32)
    snapshot, written = snapshot_writer(folder / "run", SNAPSHOT_EPOCHS, x_eval, y_eval)
    train_classifier(model, x_train, y_train, epochs=DIGITS_MLP_EPOCHS, lr=3e-3, snapshot=snapshot)
    final = folder / "run" / f"epoch_{DIGITS_MLP_EPOCHS:02d}.safetensors"
    check_same_weights(final, folder / "model.safetensors")
    return written


def check_same_weights(snapshot: Path, model: Path) -> None:
    """Fail loudly unless two ``.safetensors`` files hold equal tensors under equal names."""
    first, second = load_file(snapshot), load_file(model)
    same = first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    if not same:
        raise RuntimeError(f"{snapshot} does not hold the weights of {model}")


def digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Load the scikit-learn digits, scale pixels to [0, 1] and hold out a stratified batch.

    Returns:
        ``(train inputs, train targets, eval inputs, eval targets)``; inputs are float32
        ``(N, 64)``, targets int64 ``(N,)``.
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:
        raise SystemExit("regenerate.py needs scikit-learn: pip install scikit-learn") from exc
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_eval, y_train, y_eval = train_test_split(
        x, y, test_size=EVAL_SAMPLES, random_state=SPLIT_SEED, stratify=y
    )
    return (
        torch.from_numpy(x_train),
        torch.from_numpy(y_train),
        torch.from_numpy(x_eval),
        torch.from_numpy(y_eval),
    )


def build_seed_ann(folder: Path) -> dict[str, Any]:
    """Train the 3 -> 4 -> 5 linear net for 20 SGD steps on its one sample (not converged)."""
    seed_everything(TRAIN_SEED)
    model = load_model_class(folder.name, "SeedANN")()
    inputs = torch.tensor([[1.0, 2.0, 3.0]])
    targets = torch.tensor([[1.0, 1.0, 5.0, 7.0, 8.0]])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with torch.no_grad():
        initial = F.mse_loss(model(inputs), targets).item()
    for _ in range(20):
        loss = F.mse_loss(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        final = F.mse_loss(model(inputs), targets).item()

    defaults = {"model": "model.py:SeedANN", "data": "data.pt", "loss": "mse"}
    write_safetensors(folder / "model.safetensors", model, defaults)
    torch.save(model.state_dict(), folder / "model.pt")
    torch.save({"inputs": inputs, "targets": targets}, folder / "data.pt")
    write_toml(folder / "hesscli.toml", defaults)

    reloaded = load_model_class(folder.name, "SeedANN")()
    reloaded.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
    with torch.no_grad():
        check_reload("seed_ann", final, F.mse_loss(reloaded(inputs), targets).item())
    print(f"  mse loss {initial:.4f} -> {final:.4f} after 20 SGD steps")
    return {"final_loss": final, "eval_loss": final, "eval_samples": 1}


def build_digits_mlp(folder: Path) -> dict[str, Any]:
    """Train the digits MLP (hidden 32, dropout 0.1) and save a training-loop checkpoint."""
    seed_everything(TRAIN_SEED)
    x_train, y_train, x_eval, y_eval = digits_split()
    model_class = load_model_class(folder.name, "DigitsMLP")
    model = model_class(hidden=32)
    epochs = DIGITS_MLP_EPOCHS
    snapshot, snapshots = snapshot_writer(folder / "run", SNAPSHOT_EPOCHS, x_eval, y_eval)
    optimizer = train_classifier(model, x_train, y_train, epochs=epochs, lr=3e-3, snapshot=snapshot)
    accuracy, eval_loss = evaluate(model, x_eval, y_eval)

    defaults = {
        "model": "model.py:DigitsMLP",
        "data": "data.safetensors",
        "loss": "cross_entropy",
        "model_kwargs": {"hidden": 32},
    }
    write_safetensors(folder / "model.safetensors", model, defaults)
    checkpoint = {
        "epoch": epochs,
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": optimizer.state_dict(),
        "accuracy": accuracy,
    }
    torch.save(checkpoint, folder / "checkpoint.pt")
    save_file({"inputs": x_eval, "targets": y_eval}, folder / "data.safetensors")
    write_toml(folder / "hesscli.toml", defaults)

    reloaded = model_class(hidden=32)
    loaded = torch.load(folder / "checkpoint.pt", weights_only=True)
    reloaded.load_state_dict(loaded["model_state_dict"])
    data = load_file(folder / "data.safetensors")
    again = evaluate(reloaded, data["inputs"], data["targets"])
    check_reload("digits_mlp", (accuracy, eval_loss), again)
    check_same_weights(
        folder / "run" / f"epoch_{epochs:02d}.safetensors", folder / "model.safetensors"
    )
    return {
        "accuracy": accuracy,
        "eval_loss": eval_loss,
        "eval_samples": len(y_eval),
        "snapshots": snapshots,
    }


def build_digits_cnn(folder: Path) -> dict[str, Any]:
    """Train the digits CNN (with BatchNorm) on 8x8 images and save a plain state dict."""
    seed_everything(TRAIN_SEED)
    x_train, y_train, x_eval, y_eval = digits_split()
    x_train, x_eval = x_train.reshape(-1, 1, 8, 8), x_eval.reshape(-1, 1, 8, 8)
    model_class = load_model_class(folder.name, "DigitsCNN")
    model = model_class()
    train_classifier(model, x_train, y_train, epochs=40, lr=3e-3)
    accuracy, eval_loss = evaluate(model, x_eval, y_eval)

    torch.save(model.state_dict(), folder / "model.pt")
    write_npz(folder / "data.npz", {"inputs": x_eval.numpy(), "targets": y_eval.numpy()})
    defaults = {"model": "model.py:DigitsCNN", "data": "data.npz", "loss": "cross_entropy"}
    write_toml(folder / "hesscli.toml", defaults)

    reloaded = model_class()
    reloaded.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
    with np.load(folder / "data.npz", allow_pickle=False) as data:
        inputs, targets = torch.from_numpy(data["inputs"]), torch.from_numpy(data["targets"])
    check_reload("digits_cnn", (accuracy, eval_loss), evaluate(reloaded, inputs, targets))
    return {"accuracy": accuracy, "eval_loss": eval_loss, "eval_samples": len(y_eval)}


def first_token_repeats(
    count: int, generator: torch.Generator, *, vocab: int = 12, seq_len: int = 10
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample uniform token sequences labelled 1 if the first token occurs again later.

    Solving it needs content matching (attention between equal tokens) and position (which
    token is the first); with 12 tokens and length 10 about 54 % of labels are 1.

    Returns:
        ``(tokens, labels)``: int64 ``(count, seq_len)`` and int64 ``(count,)``.
    """
    tokens = torch.randint(0, vocab, (count, seq_len), generator=generator)
    labels = (tokens[:, 1:] == tokens[:, :1]).any(dim=1).long()
    return tokens, labels


def build_tiny_transformer(folder: Path) -> dict[str, Any]:
    """Train the one-block transformer on freshly sampled sequences of the repeat task."""
    seed_everything(TRAIN_SEED)
    model_class = load_model_class(folder.name, "TinyTransformer")
    model = model_class()
    x_eval, y_eval = first_token_repeats(EVAL_SAMPLES, torch.Generator().manual_seed(1))
    data = torch.Generator().manual_seed(2)
    steps = 3000
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    model.train()
    for _ in range(steps):
        tokens, labels = first_token_repeats(128, data)
        loss = F.cross_entropy(model(tokens), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    accuracy, eval_loss = evaluate(model, x_eval, y_eval)

    defaults = {"model": "model.py:TinyTransformer", "data": "data.pt", "loss": "cross_entropy"}
    write_safetensors(folder / "model.safetensors", model, defaults)
    torch.save((x_eval, y_eval), folder / "data.pt")
    write_toml(folder / "hesscli.toml", defaults)

    reloaded = model_class()
    reloaded.load_state_dict(load_file(folder / "model.safetensors"))
    inputs, targets = torch.load(folder / "data.pt", weights_only=True)
    check_reload("tiny_transformer", (accuracy, eval_loss), evaluate(reloaded, inputs, targets))
    return {"accuracy": accuracy, "eval_loss": eval_loss, "eval_samples": len(y_eval)}


def tagging_sequences(
    count: int,
    generator: torch.Generator,
    *,
    vocab: int = 16,
    max_len: int = 12,
    min_len: int = 2,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample right-padded token sequences of random length, each token tagged by its context.

    Lengths are uniform in ``min_len..max_len``; real tokens are ids ``1..vocab - 1`` and
    padding is 0. Each token after the first copies the previous token with probability 0.2,
    copies a random token from further back (not the previous one) with probability 0.35, and
    is otherwise uniform, so all three tags are common. The tag of a token is

    - 1 if it equals the previous token,
    - 2 if it occurred earlier, but not right before it,
    - 0 otherwise (its first occurrence; always so for the first token),

    which takes content matching (attention between equal tokens) plus relative position
    (whether the match is the previous token). About 51 % / 27 % / 22 % of real tokens are
    tagged 0 / 1 / 2. Targets at padding are -100, ``F.cross_entropy``'s default
    ``ignore_index``, so its mean runs over real tokens only.

    Returns:
        ``(tokens, mask, targets)``: int64 ``(count, max_len)`` token ids, bool
        ``(count, max_len)`` (True at real tokens) and int64 ``(count, max_len)`` tags.
    """
    tokens = torch.randint(1, vocab, (count, max_len), generator=generator)
    for i in range(1, max_len):
        draw = torch.rand(count, generator=generator)
        back = (torch.rand(count, generator=generator) * max(i - 1, 1)).long()  # in 0..i-2
        earlier = tokens[:, :i].gather(1, back[:, None])[:, 0]
        copy_earlier = (draw >= 0.2) & (draw < 0.55) & (i >= 2)
        tokens[:, i] = torch.where(
            draw < 0.2, tokens[:, i - 1], torch.where(copy_earlier, earlier, tokens[:, i])
        )
    lengths = torch.randint(min_len, max_len + 1, (count,), generator=generator)
    mask = torch.arange(max_len) < lengths[:, None]
    before = torch.ones(max_len, max_len, dtype=torch.bool).tril(-1)  # [i, j]: j < i
    seen = ((tokens[:, :, None] == tokens[:, None, :]) & before).any(dim=2)
    previous = torch.zeros_like(mask)
    previous[:, 1:] = tokens[:, 1:] == tokens[:, :-1]
    tags = torch.where(previous, 1, torch.where(seen, 2, 0))
    return tokens.masked_fill(~mask, 0), mask, tags.masked_fill(~mask, -100)


@torch.no_grad()
def evaluate_tokens(
    model: nn.Module, inputs: Mapping[str, torch.Tensor], targets: torch.Tensor
) -> tuple[float, float]:
    """Return ``(token accuracy, token-mean cross-entropy)`` of a tagger in eval mode.

    Both are over real tokens only (targets other than -100): ``(B, classes, T)`` logits
    against ``(B, T)`` targets, where :func:`evaluate` expects ``(B, classes)`` ones.
    """
    model.eval()
    logits = model(**inputs)
    real = targets != -100
    accuracy = (logits.argmax(dim=1) == targets)[real].double().mean().item()
    return accuracy, F.cross_entropy(logits, targets).item()


def build_tiny_tagger(folder: Path) -> dict[str, Any]:
    """Train the one-block tagger on freshly sampled padded sequences of the tagging task.

    The evaluation batch is sorted by length, longest first, so that any split of it into
    consecutive micro-batches gives micro-batches with different numbers of real tokens: a
    token-mean loss must then be weighted by tokens, not by sequences, to come out right.
    """
    seed_everything(TRAIN_SEED)
    model_class = load_model_class(folder.name, "TinyTagger")
    model = model_class()
    tokens, mask, targets = tagging_sequences(EVAL_SAMPLES, torch.Generator().manual_seed(1))
    order = mask.sum(dim=1).argsort(descending=True, stable=True)
    inputs = {"tokens": tokens[order], "mask": mask[order]}
    targets = targets[order]
    data = torch.Generator().manual_seed(2)
    steps = 1000
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    model.train()
    for _ in range(steps):
        batch_tokens, batch_mask, batch_targets = tagging_sequences(128, data)
        loss = F.cross_entropy(model(batch_tokens, batch_mask), batch_targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    accuracy, eval_loss = evaluate_tokens(model, inputs, targets)

    defaults = {"model": "model.py:TinyTagger", "data": "data.pt", "loss": "cross_entropy"}
    write_safetensors(folder / "model.safetensors", model, defaults)
    torch.save({"inputs": inputs, "targets": targets}, folder / "data.pt")
    write_toml(folder / "hesscli.toml", defaults)

    reloaded = model_class()
    reloaded.load_state_dict(load_file(folder / "model.safetensors"))
    data_file = torch.load(folder / "data.pt", weights_only=True)
    again = evaluate_tokens(reloaded, data_file["inputs"], data_file["targets"])
    check_reload("tiny_tagger", (accuracy, eval_loss), again)
    return {
        "accuracy": accuracy,
        "eval_loss": eval_loss,
        "eval_samples": len(targets),
        "eval_tokens": int(mask.sum()),
    }


def build_hf(name: str) -> Callable[[Path], dict[str, Any]]:
    """The builder ``name`` of ``hf_samples.py`` (imported when called: it needs transformers)."""

    def build(folder: Path) -> dict[str, Any]:
        path = HERE / "hf_samples.py"
        spec = importlib.util.spec_from_file_location("sample_models_hf_samples", path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import {path}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return getattr(module, name)(folder)

    return build


#: Folder -> (class in its model.py, or None when the builder counts the parameters, builder).
BUILDERS: dict[str, tuple[str | None, Callable[[Path], dict[str, Any]]]] = {
    "seed_ann": ("SeedANN", build_seed_ann),
    "digits_mlp": ("DigitsMLP", build_digits_mlp),
    "digits_cnn": ("DigitsCNN", build_digits_cnn),
    "tiny_transformer": ("TinyTransformer", build_tiny_transformer),
    "tiny_tagger": ("TinyTagger", build_tiny_tagger),
    "hf_bert": (None, build_hf("build_hf_bert")),
    "hf_gpt2": (None, build_hf("build_hf_gpt2")),
}


def snapshots_only() -> None:
    """Rewrite only ``digits_mlp/run/`` and the digits MLP's manifest entry."""
    configure_determinism()
    folder = HERE / "digits_mlp"
    print("digits_mlp (snapshots only):")
    snapshots = build_digits_mlp_snapshots(folder)
    path = HERE / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    entry = manifest["digits_mlp"]
    entry.pop("files", None)
    entry["snapshots"] = snapshots
    entry["files"] = file_sizes(folder)
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    print(f"updated {path}")


def build_entry(name: str) -> dict[str, Any]:
    """Build the model folder ``name`` and return its ``manifest.json`` entry."""
    class_name, build = BUILDERS[name]
    folder = HERE / name
    print(f"{name}:")
    began = time.perf_counter()
    result = build(folder)
    if class_name is None:
        total, trainable = result.pop("parameters"), result.pop("trainable_parameters")
    else:
        total, trainable = count_parameters(load_model_class(name, class_name)())
    if "accuracy" in result:
        metric = f"accuracy {result['accuracy']:.2%}"
    elif "final_loss" in result:
        metric = f"loss {result['final_loss']:.4f}"
    else:
        metric = f"{result['eval_tokens']} target tokens"
    print(
        f"  {total} parameters, {metric}, eval loss {result['eval_loss']:.4f}, "
        f"{time.perf_counter() - began:.1f} s"
    )
    return {
        "parameters": total,
        "trainable_parameters": trainable,
        **result,
        "files": file_sizes(folder),
    }


def only(name: str) -> None:
    """Rebuild the one model folder ``name`` and rewrite only its ``manifest.json`` entry.

    The other entries are kept as they are (a new entry goes last), so the other folders do
    not have to be rebuilt to add or change one model.
    """
    configure_determinism()
    path = HERE / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    manifest[name] = build_entry(name)
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    print(f"updated {path}")


def main() -> None:
    """Build every model folder, then write ``manifest.json``.

    With ``--snapshots-only``, retrain the digits MLP to write its ``run/`` snapshots and
    leave every other file alone. With ``--only NAME``, rebuild just that folder and its
    manifest entry.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--snapshots-only",
        action="store_true",
        help="retrain the digits MLP and rewrite only digits_mlp/run/ and its manifest entry",
    )
    which.add_argument(
        "--only",
        choices=list(BUILDERS),
        metavar="NAME",
        help=f"rebuild only this folder and its manifest entry (one of: {', '.join(BUILDERS)})",
    )
    args = parser.parse_args()
    if args.snapshots_only:
        snapshots_only()
        return
    if args.only is not None:
        only(args.only)
        return
    configure_determinism()
    start = time.perf_counter()
    manifest = {name: build_entry(name) for name in BUILDERS}
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {HERE / 'manifest.json'} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
