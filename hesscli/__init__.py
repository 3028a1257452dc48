"""hesscli: Hessian diagnostics for trained PyTorch checkpoints.

The command-line tool loads a model definition, a checkpoint and a data batch and reports the
curvature of the training loss. The library layers (``hesscli.loading``, ``hesscli.engine``) are
importable from notebooks and run the same code as the command line.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
