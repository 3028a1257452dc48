"""The examples in the docstrings run and give what they say."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "hesscli.algorithms.lanczos",
    "hesscli.algorithms.lanczos_memory",
    "hesscli.algorithms.eigen",
    "hesscli.algorithms.ritz",
    "hesscli.algorithms.trace",
    "hesscli.engine.operator",
    "hesscli.engine.precision",
    "hesscli.engine.weighting",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no example"
    assert result.failed == 0
