"""hesscli: Hessian diagnostics for trained PyTorch checkpoints.

The command-line tool loads a model definition, a checkpoint and a data batch and reports the
curvature of the training loss. The library layers (``hesscli.loading``, ``hesscli.engine``) are
importable from notebooks and run the same code as the command line.
"""

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "curvature_operator"]


def __getattr__(name: str) -> Any:
    # Lazy, so that ``hesscli --version`` does not import torch.
    if name == "curvature_operator":
        from hesscli.runs.prepare import curvature_operator

        return curvature_operator
    raise AttributeError(f"module 'hesscli' has no attribute {name!r}")
