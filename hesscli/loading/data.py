"""Read evaluation data: tensor files, text, ``save_to_disk`` folders, or a Python factory.

A data set is held in memory as a tuple of batches, so every pass over it sees exactly the same
samples in the same order (curvature estimates need a fixed loss). Inputs may be one tensor, a
tuple of tensors (passed positionally) or a dict of tensors (passed as keyword arguments). A
Hugging Face batch dict (``input_ids``, ``attention_mask``, ``labels``, ...) gives its entries
but ``labels`` as keyword inputs and ``labels`` as targets; text (JSONL, CSV) is read by
:mod:`hesscli.loading.text`, dataset folders by :mod:`hesscli.loading.saved_dataset`.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hesscli.batches import Batch, Dataset, input_tensors
from hesscli.errors import DataError
from hesscli.loading.guard import refuse_special_file
from hesscli.loading.imports import absolute_path, looks_like_spec, parse_spec, resolve_object
from hesscli.loading.saved_dataset import is_saved_dataset, read_saved_dataset
from hesscli.loading.text import (
    TEXT_SUFFIXES,
    TextOptions,
    encode_records,
    hf_batch,
    looks_like_hf_batch,
    read_records,
)

INPUT_KEYS = ("inputs", "x", "input", "X", "features")
TARGET_KEYS = ("targets", "y", "target", "Y", "labels")


def _pick(mapping: Mapping[str, Any], names: tuple[str, ...]) -> str | None:
    return next((name for name in names if name in mapping), None)


def _from_mapping(
    mapping: Mapping[str, Any], *, where: str, options: TextOptions | None = None
) -> Batch:
    x_key, y_key = _pick(mapping, INPUT_KEYS), _pick(mapping, TARGET_KEYS)
    if x_key is None and looks_like_hf_batch(mapping):
        return Batch(*hf_batch(mapping, options=options or TextOptions(), where=where))
    if x_key is None or y_key is None:
        keys = ", ".join(map(str, mapping)) or "none"
        raise DataError(
            f"{where} has no recognisable inputs/targets (keys found: {keys})",
            "store the tensors under 'inputs' and 'targets' (or 'x' and 'y'), or a Hugging "
            "Face batch with 'input_ids' and 'labels'",
        )
    inputs = mapping[x_key]
    if isinstance(inputs, list):
        inputs = tuple(inputs)
    return Batch(inputs, mapping[y_key])


def _from_object(obj: Any, *, where: str, options: TextOptions | None = None) -> Batch:
    if isinstance(obj, Mapping):
        return _from_mapping(obj, where=where, options=options)
    if isinstance(obj, tuple | list) and len(obj) == 2:
        inputs, targets = obj
        if isinstance(inputs, list):
            inputs = tuple(inputs)
        return Batch(inputs, targets)
    raise DataError(
        f"{where} holds a {type(obj).__name__}, not inputs and targets",
        "store a dict with 'inputs' and 'targets', or an (inputs, targets) tuple",
    )


def _check_batch(batch: Batch, *, where: str) -> Batch:
    """Check types, shared sample dimension and finiteness of one batch."""
    if not isinstance(batch.targets, torch.Tensor):
        raise DataError(
            f"{where}: targets are a {type(batch.targets).__name__}, not a tensor",
            "store the targets as a torch tensor or numpy array",
        )
    named = input_tensors(batch.inputs) if _is_inputs(batch.inputs) else []
    if not named:
        raise DataError(
            f"{where}: inputs are a {type(batch.inputs).__name__}, not a tensor",
            "store the inputs as a tensor, a tuple of tensors or a dict of tensors",
        )
    if batch.targets.ndim == 0:
        raise DataError(f"{where}: targets are a scalar", "give one target per sample")
    for name, tensor in [*named, ("targets", batch.targets)]:
        if tensor.ndim == 0 or tensor.shape[0] != batch.size:
            shape = tuple(tensor.shape)
            raise DataError(
                f"{where}: {name} has shape {shape} but there are {batch.size} targets",
                "inputs and targets need the same number of samples in dimension 0",
            )
        if tensor.is_floating_point() or tensor.is_complex():
            nan, inf = int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())
            if nan or inf:
                raise DataError(
                    f"{where}: {name} contains {nan} NaN and {inf} Inf values",
                    "clean the data (or drop those samples) before computing curvature",
                )
    return batch


def _is_inputs(inputs: Any) -> bool:
    if isinstance(inputs, torch.Tensor):
        return True
    if isinstance(inputs, dict):
        return bool(inputs) and all(isinstance(v, torch.Tensor) for v in inputs.values())
    if isinstance(inputs, tuple):
        return bool(inputs) and all(isinstance(v, torch.Tensor) for v in inputs)
    return False


def _as_tensor(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    return value


def _tensorise(batch: Batch) -> Batch:
    inputs = batch.inputs
    if isinstance(inputs, dict):
        inputs = {k: _as_tensor(v) for k, v in inputs.items()}
    elif isinstance(inputs, tuple):
        inputs = tuple(_as_tensor(v) for v in inputs)
    else:
        inputs = _as_tensor(inputs)
    return Batch(inputs, _as_tensor(batch.targets))


def _read_file(
    path: Path, options: TextOptions, max_samples: int | None
) -> tuple[Batch, str, int | None]:
    """One batch from a file, its format, and the samples it held before ``max_samples``."""
    suffix = path.suffix.lower()
    where = f"data file {path}"
    if suffix in TEXT_SUFFIXES:
        records = read_records(path)
        if not records:
            raise DataError(f"data {path} holds no samples", "give at least one record")
        used = records[:max_samples] if max_samples is not None else records
        batch = Batch(*encode_records(used, options=options, where=where))
        return batch, suffix.lstrip("."), len(records)
    batch, kind = _read_tensors(path, options, where)
    return batch, kind, None  # counted once the batch is checked


def _read_tensors(path: Path, options: TextOptions, where: str) -> tuple[Batch, str]:
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return _from_mapping(load_file(str(path)), where=where, options=options), "safetensors"
        except DataError:
            raise
        except Exception as exc:
            raise DataError(
                f"{where} is not a readable safetensors file ({type(exc).__name__})",
                "the file is truncated or corrupt; re-export it",
            ) from exc
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
            raise DataError(
                f"{where} is not a readable .npz archive ({type(exc).__name__}: {exc})",
                "write it with numpy.savez holding 'inputs' and 'targets' arrays",
            ) from exc
        return _from_mapping(arrays, where=where, options=options), "npz"
    if suffix not in {".pt", ".pth", ".bin"}:
        raise DataError(
            f"{where} has an unsupported extension {suffix!r}",
            "use a .pt, .safetensors, .npz, .jsonl or .csv file, or a module:function factory",
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        encoding = "BatchEncoding" in str(exc)  # a tokenizer's output, pickled as itself
        raise DataError(
            f"{where} is not a readable tensor file ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''})",
            "save the tokenizer's output as a plain dict: torch.save(dict(batch), path)"
            if encoding
            else "save it with torch.save({'inputs': x, 'targets': y}) (tensors only)",
        ) from exc
    return _from_object(obj, where=where, options=options), "pt"


def _call_factory(spec_text: str, *, base: Path, options: TextOptions) -> list[Batch]:
    spec = parse_spec(spec_text, base=base, what="data factory", error=DataError)
    factory = resolve_object(spec, base=base, what="data factory", error=DataError)
    if not callable(factory):
        raise DataError(
            f"data factory {spec.name!r} is a {type(factory).__name__}, not a function",
            "point --data at a function returning (inputs, targets) or an iterable of batches",
        )
    where = f"data factory {spec_text}"
    try:
        produced = factory()
    except (Exception, SystemExit) as exc:
        raise DataError(f"{where} {_failure(exc)}", "fix the factory function") from exc
    single_pair = (
        isinstance(produced, tuple | list)
        and len(produced) == 2
        and isinstance(produced[1], torch.Tensor | np.ndarray)
    )
    if isinstance(produced, Mapping) or single_pair:
        return [_from_object(produced, where=where, options=options)]
    if not isinstance(produced, Iterable):
        raise DataError(
            f"{where} returned a {type(produced).__name__}",
            "return (inputs, targets), a dict, or an iterable of such batches",
        )
    batches, items = [], iter(produced)
    while True:  # the factory's own code runs on each step of a generator
        try:
            item = next(items)
        except StopIteration:
            return batches
        except (Exception, SystemExit) as exc:
            raise DataError(
                f"{where} {_failure(exc)} while producing batch {len(batches)}",
                "fix the factory function",
            ) from exc
        batches.append(_from_object(item, where=f"{where} batch {len(batches)}", options=options))


def _failure(exc: BaseException) -> str:
    """What user code did, for a message: ``raised Type: message`` or ``called sys.exit(c)``."""
    if isinstance(exc, SystemExit):
        return f"called sys.exit({exc.code!r})"
    text = " ".join(str(exc).split())
    return f"raised {type(exc).__name__}: {text}" if text else f"raised {type(exc).__name__}"


def _truncate(batches: list[Batch], max_samples: int | None) -> Iterator[Batch]:
    remaining = max_samples
    for batch in batches:
        if remaining is not None and remaining <= 0:
            return
        if remaining is not None and batch.size > remaining:
            yield batch.slice(0, remaining)
            return
        if remaining is not None:
            remaining -= batch.size
        yield batch


def load_data(
    spec: str,
    *,
    base: Path,
    max_samples: int | None = None,
    text: TextOptions | None = None,
) -> Dataset:
    """Read the data named by ``spec``: a tensor or text file, a dataset folder, or a factory.

    Args:
        spec: A file or ``save_to_disk`` folder, or ``path/to/file.py:function`` /
            ``package.module:function``.
        base: Directory relative paths resolve against.
        max_samples: Use only the first this many samples.
        text: The checkpoint folder (tokenizer, model family) and the text options.

    Returns:
        The data set, every batch checked for shape agreement and finite values.
    """
    if max_samples is not None and max_samples < 1:
        raise DataError(f"--max-samples must be at least 1, got {max_samples}", "pass a count")
    options = text or TextOptions()
    path = absolute_path(spec, base)
    available = None
    if path.exists() or not looks_like_spec(spec):
        if not path.exists():
            raise DataError(f"data file not found: {path}", "check the --data path")
        if path.is_dir() and is_saved_dataset(path):
            *pair, available = read_saved_dataset(path, options=options, max_samples=max_samples)
            raw, kind, source = [Batch(*pair)], "dataset", str(path)
        elif path.is_dir():
            raise DataError(
                f"data path {path} is a directory",
                "pass a .pt, .safetensors, .npz, .jsonl or .csv file, or a folder written by "
                "datasets' save_to_disk",
            )
        else:
            refuse_special_file(path, what="data file", error=DataError)  # never open a FIFO
            batch, kind, available = _read_file(path, options, max_samples)
            raw, source = [batch], str(path)
    else:
        raw, kind, source = _call_factory(spec, base=base, options=options), "factory", spec
    batches = [_tensorise(b) for b in raw]
    batches = [_check_batch(b, where=f"data {source}") for b in batches]
    if available is None:
        available = sum(b.size for b in batches)
    if available == 0:
        raise DataError(f"data {source} holds no samples", "give at least one sample")
    used = tuple(b for b in _truncate(batches, max_samples) if b.size > 0)
    return Dataset(used, source, kind, available)
