"""The JSON schemas of ``density``, ``report``, ``check`` and ``compare`` against their results.

One realistic instance of each result class is built from :mod:`hesscli.results` (all in the
builders below: update them there when a dataclass gains a field), wrapped in a
:class:`~hesscli.results.Report`, rendered by the JSON renderer and validated. Negative cases
prove each schema can fail: every dataclass field is required, types and the command are
checked.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Iterator
from importlib.resources import files
from typing import Any

import jsonschema
import pytest

from hesscli import __version__
from hesscli.cli.render.json_render import render_json
from hesscli.results import (
    CheckItem,
    Checkpoint,
    CheckResults,
    CompareResults,
    Cost,
    Density,
    DensityResults,
    DiagonalEntry,
    DiagonalSummary,
    Eigenvalue,
    Engine,
    Flag,
    LayerSummary,
    Mass,
    Plan,
    Precision,
    Report,
    ReportResults,
    RunInputs,
    RunSettings,
    Summary,
    Trace,
)

COMMANDS = ("density", "report", "check", "compare")
SCHEMA_DIR = files("hesscli").joinpath("schema")

#: The digits MLP's layers and their parameter counts (3,466 in all).
LAYERS = {"fc1": 2080, "fc2": 1056, "fc3": 330}
PARAMETERS = sum(LAYERS.values())
NAN = float("nan")


def load_schema(command: str) -> dict[str, Any]:
    """The packaged schema of ``command``."""
    return json.loads(SCHEMA_DIR.joinpath(f"{command}.schema.json").read_text(encoding="utf-8"))


# --- builders: the one place that constructs result objects -------------------------------


def eigenvalue(value: float, residual: float = 3e-7, *, converged: bool = True) -> Eigenvalue:
    """An eigenvalue with its residual (and an error a hundredth of it)."""
    return Eigenvalue(value=value, residual=residual, error=residual / 100, converged=converged)


def trace(value: float, parameters: int, stderr: float = 0.0) -> Trace:
    """A trace; exact when ``stderr`` is 0."""
    return Trace(
        value=value,
        stderr=stderr,
        exact=stderr == 0.0,
        interval=1.96 * stderr,
        parameters=parameters,
    )


def mass(value: float = 0.04, stderr: float = 0.01) -> Mass:
    """A negative-eigenvalue mass with its quadrature bounds."""
    return Mass(
        value=value,
        stderr=stderr,
        threshold=1e-9,
        low=max(value - 0.03, 0.0),
        high=min(value + 0.05, 1.0),
    )


def diagonal(layer: str, count: int) -> DiagonalSummary:
    """Statistics of one layer's exact diagonal."""
    largest = [
        DiagonalEntry(parameter=f"{layer}.weight", index=[3, 17], value=0.412),
        # A tuple: the renderer turns it into a list.
        DiagonalEntry(parameter=f"{layer}.bias", index=(5,), value=-0.0381),  # type: ignore[arg-type]
    ]
    return DiagonalSummary(
        count=count,
        mean=2.1e-3,
        std=1.4e-2,
        min=-3.81e-2,
        max=0.412,
        median=4.0e-4,
        p01=-6.2e-3,
        p99=5.5e-2,
        fraction_negative=0.18,
        sum=2.1e-3 * count,
        exact=True,
        stderr=0.0,
        method="exact",
        largest=largest,
    )


def density(parameters: int, *, probes: int = 2, nan_stderr: bool = False) -> Density:
    """A small SLQ density: 5 grid points, 3 Ritz values per probe."""
    grid = [-0.5, 0.0, 0.5, 1.0, 1.5]
    stderr = [0.0, 0.3, 0.1, 0.05, 0.01]
    if nan_stderr:
        stderr[0] = NAN  # one probe's spread is undefined: null in JSON
    return Density(
        grid=grid,
        density=[0.01, 1.6, 0.3, 0.08, 0.01],
        stderr=stderr,
        sigma=0.05,
        probes=probes,
        steps=3,
        nodes=[[-0.02, 0.1, 1.31]] * probes,
        weights=[[0.05, 0.9, 0.05]] * probes,
        negative_mass=mass(),
        significant_negative_mass=mass(),
        parameters=parameters,
    )


def engine() -> Engine:
    """The differentiation route."""
    return Engine(route="forward-over-reverse", reason="checked against double backward")


def flags() -> list[Flag]:
    """Two interpretive flags."""
    return [
        Flag(name="saddle", subject="model", message="4 % of the eigenvalues are negative"),
        Flag(name="dominant", subject="fc3", message="fc3 holds 71 % of the trace"),
    ]


def layer_summaries() -> dict[str, LayerSummary]:
    """One report row per digits MLP layer."""
    return {
        name: LayerSummary(
            parameters=count,
            trace=trace(0.5 + count / 1000, count, stderr=0.02),
            top=eigenvalue(1.2 - count / 5000),
            bottom=eigenvalue(-0.03, residual=2e-5, converged=False),
            diagonal=diagonal(name, count),
            flags=["dominant"] if name == "fc3" else [],
        )
        for name, count in LAYERS.items()
    }


def summary(*, nan_ratio: bool = False) -> Summary:
    """Model-level numbers; ``nan_ratio`` makes λmin/λmax undefined."""
    return Summary(
        top=eigenvalue(1.31),
        bottom=eigenvalue(-0.047, residual=1e-5),
        trace=trace(4.2, PARAMETERS, stderr=0.11),
        ratio=NAN if nan_ratio else -0.047 / 1.31,
        negative_mass=mass(),
        significant_negative_mass=mass(),
        trace_per_parameter=4.2 / PARAMETERS,
        trace_per_parameter_stderr=0.11 / PARAMETERS,
    )


def cost(seconds: float = 1.7) -> Cost:
    """What a run spent."""
    return Cost(seconds=seconds, hvps=480, data_passes=12, check_hvps=2, output_space_products=60)


def results(command: str, *, with_layers: bool = True) -> Any:
    """A realistic result object of ``command``; ``with_layers=False`` empties its layers."""
    rows = layer_summaries() if with_layers else {}
    if command == "density":
        whole = density(PARAMETERS, nan_stderr=True)
        return DensityResults(
            **{f.name: getattr(whole, f.name) for f in dataclasses.fields(Density)},
            top=[eigenvalue(1.31), eigenvalue(0.88)],
            bottom=[eigenvalue(-0.047, residual=1e-4, converged=False)],
            trace=trace(4.2, PARAMETERS, stderr=0.3),
            layers={n: density(c) for n, c in LAYERS.items()} if with_layers else {},
            engine=engine(),
        )
    if command == "report":
        return ReportResults(
            summary=summary(nan_ratio=True),
            layers=rows,
            density=density(PARAMETERS),
            flags=flags(),
            plan=Plan(data_passes=12, products=480, seconds=2.0, pass_seconds=0.15),
            engine=engine(),
        )
    if command == "check":
        checks = [
            CheckItem(
                name="max-eigenvalue",
                quantity="top",
                layer=None,
                relation="<=",
                limit=2 / 3e-3,
                measured=1.31,
                stderr=0.0,
                allowance=0.0,
                margin=2 / 3e-3 - 1.31,
                passed=True,
            ),
            CheckItem(
                name="max-trace",
                quantity="trace",
                layer="fc3",
                relation="<=",
                limit=1.0,
                measured=NAN,  # a measurement that came out NaN: null in JSON, and it fails
                stderr=NAN,
                allowance=NAN,
                margin=NAN,
                passed=False,
            ),
        ]
        return CheckResults(
            passed=False,
            checks=checks,
            baseline=None,
            tolerance=0.1,
            summary=summary(),
            layers=rows,
            flags=flags(),
            engine=engine(),
        )
    if command == "compare":
        return CompareResults(
            checkpoints=[
                Checkpoint(
                    checkpoint=f"run/epoch_{epoch:02d}.safetensors",
                    summary=summary(nan_ratio=epoch == 1),
                    layers=rows,
                    flags=flags() if epoch == 60 else [],
                    cost=cost(0.4),
                )
                for epoch in (1, 5, 20, 60)
            ],
            engine=engine(),
        )
    raise ValueError(command)


def report(command: str, *, with_layers: bool = True) -> Report:
    """``results(command)`` in the envelope every command returns."""
    return Report(
        command=command,
        inputs=RunInputs(
            checkpoint="/work/sample_models/digits_mlp/model.safetensors",
            model="model.py:DigitsMLP",
            data="data.safetensors",
            loss="cross_entropy",
            samples=256,
            parameters=PARAMETERS,
            trainable_parameters=PARAMETERS,
            layers=list(LAYERS) if with_layers else [],
            config="/work/sample_models/digits_mlp/hesscli.toml",
        ),
        settings=RunSettings(
            curvature="hessian",
            device="cpu",
            dtype="float64",
            seed=0,
            micro_batch=256,
            max_samples=None,
            train_mode=False,
            sources={"model": "checkpoint metadata", "seed": "option"},
            options={"probes": 2, "steps": 3, "per_layer": with_layers, "plot": None},
            precision=Precision(allow_tf32=False, tf32=False, float32_matmul_precision="highest"),
        ),
        results=results(command, with_layers=with_layers),
        cost=cost(),
        hesscli_version=__version__,
    )


def document(command: str, *, with_layers: bool = True) -> dict[str, Any]:
    """The JSON document ``--json`` prints for ``report(command)``."""
    return json.loads(render_json(report(command, with_layers=with_layers)))


# --- helpers ------------------------------------------------------------------------------


def dataclass_nodes(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple, list[str]]]:
    """``(JSON path, field names)`` of every dataclass inside ``value`` (itself included)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = [f.name for f in dataclasses.fields(value) if f.name != "input_files"]
        yield path, names
        for name in names:
            yield from dataclass_nodes(getattr(value, name), (*path, name))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from dataclass_nodes(item, (*path, index))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from dataclass_nodes(item, (*path, str(key)))


def at(data: Any, path: tuple[Any, ...]) -> Any:
    """The node of ``data`` at ``path``."""
    for step in path:
        data = data[step]
    return data


def fails(data: dict[str, Any], schema: dict[str, Any]) -> bool:
    """Whether ``data`` violates ``schema``."""
    return next(jsonschema.Draft202012Validator(schema).iter_errors(data), None) is not None


# --- tests --------------------------------------------------------------------------------


def test_every_schema_file_is_a_valid_draft_2020_12_schema() -> None:
    names = sorted(p.name for p in SCHEMA_DIR.iterdir() if p.name.endswith(".schema.json"))
    assert {f"{c}.schema.json" for c in COMMANDS} <= set(names)
    for name in names:
        schema = json.loads(SCHEMA_DIR.joinpath(name).read_text(encoding="utf-8"))
        jsonschema.Draft202012Validator.check_schema(schema)
        command = name.removesuffix(".schema.json")
        assert schema["$id"] == f"https://hesscli.dev/schema/{command}-1.json"
        assert schema["properties"]["command"] == {"const": command}


@pytest.mark.parametrize("with_layers", [True, False], ids=["layers", "no-layers"])
@pytest.mark.parametrize("command", COMMANDS)
def test_rendered_result_validates(command: str, with_layers: bool) -> None:
    data = document(command, with_layers=with_layers)
    assert list(data) == [
        "schema_version",
        "hesscli_version",
        "command",
        "inputs",
        "settings",
        "results",
        "cost",
    ]
    jsonschema.validate(data, load_schema(command))
    if not with_layers:
        layers = (
            [c["layers"] for c in data["results"]["checkpoints"]]
            if command == "compare"
            else [data["results"]["layers"]]
        )
        assert layers and all(entry == {} for entry in layers)


def test_nan_becomes_null_and_validates() -> None:
    density_doc = document("density")
    assert density_doc["results"]["stderr"][0] is None
    report_doc = document("report")
    assert report_doc["results"]["summary"]["ratio"] is None
    check_doc = document("check")
    assert check_doc["results"]["checks"][1]["measured"] is None
    assert math.isfinite(check_doc["results"]["checks"][0]["measured"])
    compare_doc = document("compare")
    assert compare_doc["results"]["checkpoints"][0]["summary"]["ratio"] is None
    # A tuple index came out as a list.
    assert report_doc["results"]["layers"]["fc1"]["diagonal"]["largest"][1]["index"] == [5]
    for command, data in [
        ("density", density_doc),
        ("report", report_doc),
        ("check", check_doc),
        ("compare", compare_doc),
    ]:
        jsonschema.validate(data, load_schema(command))


@pytest.mark.parametrize("command", COMMANDS)
def test_every_dataclass_field_is_required(command: str) -> None:
    """Dropping any field of any dataclass in the document makes it invalid."""
    schema = load_schema(command)
    data = document(command)
    checked = 0
    for path, names in dataclass_nodes(report(command)):
        for name in names:
            broken = copy.deepcopy(data)
            del at(broken, path)[name]
            assert fails(broken, schema), f"{command}: {'.'.join(map(str, (*path, name)))}"
            checked += 1
    assert checked > 50


@pytest.mark.parametrize("command", COMMANDS)
def test_wrong_command_or_schema_version_fails(command: str) -> None:
    schema = load_schema(command)
    for other in ("spectrum", *(c for c in COMMANDS if c != command)):
        data = document(command)
        data["command"] = other
        assert fails(data, schema), other
    data = document(command)
    data["schema_version"] = 2
    assert fails(data, schema)


# (command, JSON path, wrong value): wrong types and nulls where none is allowed.
WRONG = [
    ("density", ("results", "probes"), "2"),
    ("density", ("results", "grid"), 0.5),
    ("density", ("results", "layers", "fc1", "negative_mass", "value"), "4 %"),
    ("density", ("results", "top", 0, "converged"), None),
    ("density", ("settings", "options"), ["probes", 2]),
    ("report", ("results", "summary", "top", "converged"), "yes"),
    ("report", ("results", "layers", "fc2", "diagonal", "count"), 1.5),
    ("report", ("results", "layers", "fc2", "diagonal", "largest", 0, "index"), "3,17"),
    ("report", ("results", "flags", 0), "saddle"),
    ("report", ("results", "plan", "products"), None),
    ("check", ("results", "passed"), 1),
    ("check", ("results", "checks", 0, "layer"), 3),
    ("check", ("results", "checks"), {}),
    ("check", ("cost", "hvps"), -1),
    ("compare", ("results", "checkpoints"), {}),
    ("compare", ("results", "checkpoints", 0, "cost", "seconds"), None),
    ("compare", ("results", "checkpoints", 1, "layers", "fc3", "trace"), 0.9),
    ("compare", ("inputs", "samples"), "256"),
]


@pytest.mark.parametrize(("command", "path", "value"), WRONG)
def test_wrong_type_fails(command: str, path: tuple[Any, ...], value: Any) -> None:
    schema = load_schema(command)
    data = document(command)
    jsonschema.validate(data, schema)
    at(data, path[:-1])[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, schema)


@pytest.mark.parametrize("command", COMMANDS)
def test_schemas_stay_open_to_additions(command: str) -> None:
    """The contract may be extended: unknown keys are accepted."""
    data = document(command)
    data["results"]["new_quantity"] = {"value": 1.0}
    data["cost"]["new_counter"] = 3
    jsonschema.validate(data, load_schema(command))
