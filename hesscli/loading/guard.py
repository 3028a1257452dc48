"""The rule that hesscli never writes over a file it reads."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from hesscli.errors import ConfigError
from hesscli.loading.imports import looks_like_spec


def refuse_to_overwrite(output: Path | None, inputs: Iterable[str | Path | None]) -> None:
    """Raise if ``output`` is a directory or one of ``inputs`` (paths or ``file.py:Name`` specs).

    Args:
        output: The file about to be written, or ``None``.
        inputs: Every file the run reads; specs are reduced to their file part.
    """
    if output is None:
        return
    target = output.expanduser().resolve()
    if target.is_dir():
        raise ConfigError(f"--output {output} is a directory", "name a file")
    for item in inputs:
        if item is None:
            continue
        path = Path(item).expanduser()
        if not path.exists() and looks_like_spec(str(item)):
            path = Path(str(item).rpartition(":")[0]).expanduser()  # file.py:Name → file.py
        if path.exists() and path.resolve() == target:
            raise ConfigError(
                f"--output {output} is one of the input files", "write the result elsewhere"
            )
