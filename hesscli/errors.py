"""Typed user errors: each names the problem and the fix, and maps to exit code 2.

Domain code raises these; the command-line boundary turns them into one line on stderr.
Anything else escaping a command is a hesscli bug and keeps its traceback.
"""

from __future__ import annotations


class HesscliError(Exception):
    """A problem with the user's input or environment, with a hint how to fix it.

    Args:
        problem: What is wrong, naming the file, option or tensor concerned.
        fix: What the user can do about it.
    """

    exit_code = 2

    def __init__(self, problem: str, fix: str = "") -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix

    def __str__(self) -> str:
        return self.one_line()

    def one_line(self) -> str:
        """The message as a single line: ``problem; fix``."""
        text = f"{self.problem}; {self.fix}" if self.fix else self.problem
        return " ".join(text.split())


class ConfigError(HesscliError):
    """A configuration file or option value is invalid."""


class ModelSpecError(HesscliError):
    """The model specification cannot be resolved to an ``nn.Module``."""


class CheckpointError(HesscliError):
    """The checkpoint is missing, unreadable, or does not fit the model."""


class DataError(HesscliError):
    """The data cannot be read or does not fit the model or the loss."""


class LossError(HesscliError):
    """The loss cannot be resolved or does not fit the targets."""


class LayerError(HesscliError):
    """A requested layer or parameter name does not exist."""


class NumericalError(HesscliError):
    """A loss, gradient, product or weight is NaN or infinite, or fails a numerical check."""


class DeviceError(HesscliError):
    """The requested device or dtype is not available."""


class DifferentiationError(HesscliError):
    """No differentiation route gives trustworthy second derivatives through the model."""


class DeterminismError(HesscliError):
    """The loss is not a fixed function of the parameters (dropout, training-mode BatchNorm)."""


class MemoryLimitError(HesscliError):
    """The computation does not fit in the memory available, even at its smallest settings."""


class DistributedError(HesscliError):
    """The distributed run cannot be set up (launcher, backend or data sharding)."""


class UserCodeError(HesscliError):
    """The user's own code (model, data factory, loss) raised, or ended the process.

    The message says which code, what it raised, and where the run was (stage and micro-batch),
    so that the user can reproduce the failure without hesscli.
    """


class PeerFailedError(DistributedError):
    """Another process of a distributed launch failed, so this one cannot go on.

    Its peer printed the reason; this process only says that it stops because of it.
    """


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (at most ``limit`` characters), else its type.

    For quoting a library's or the user's exception inside a one-line error.
    """
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
