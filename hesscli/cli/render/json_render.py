"""Result objects → one JSON document (the public contract of DESIGN.md)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import Any

from hesscli.results import Report


def _clean(value: Any) -> Any:
    """Make a value JSON-safe: tuples become lists, NaN/Inf become null."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def report_dict(report: Report) -> dict[str, Any]:
    """The report as plain JSON-able data, envelope keys first."""
    data = _clean(asdict(report))
    order = ["schema_version", "hesscli_version", "command", "inputs", "settings", "results"]
    return {key: data[key] for key in [*order, "cost"]}


def render_json(report: Report) -> str:
    """The report as an indented JSON document."""
    return json.dumps(report_dict(report), indent=2, allow_nan=False)
