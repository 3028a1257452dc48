"""What the CLI needs of the process around a run, so that it never reaches below this package.

The error boundary and the entry point of :mod:`hesscli.cli.app` ask the layers below a few
questions that are not commands: is this process one of a launcher's (torchrun), how does it
leave the process group, was an error an out-of-memory one, which micro-batch and which user
code were running when something failed, and under which float32 precision does a command run.
They are the engine's and loading's own functions, named here so that the CLI depends on the
orchestration layer, :mod:`hesscli.errors` and :mod:`hesscli.results` only
(``tests/test_architecture.py`` holds it to that).
"""

from __future__ import annotations

from hesscli.engine.device_memory import is_out_of_memory
from hesscli.engine.distributed import launched, leave
from hesscli.engine.functional import current_micro_batch
from hesscli.engine.precision import float32_precision
from hesscli.loading.imports import user_code_role

__all__ = [
    "current_micro_batch",
    "float32_precision",
    "is_out_of_memory",
    "launched",
    "leave",
    "user_code_role",
]
