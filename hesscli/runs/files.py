"""The CLI's checks on the files a command names, before anything is loaded or written.

Input paths that are not regular files (FIFOs, devices) are refused before a read could hang,
and an output file may never be one of the run's inputs nor the same file twice: hesscli never
writes into the checkpoint or data it reads (DESIGN.md). The checks live in
:mod:`hesscli.loading.guard`; they are named here so that the CLI talks to the orchestration
layer only.
"""

from __future__ import annotations

from hesscli.loading.guard import check_outputs_differ, refuse_special_inputs, refuse_to_overwrite

__all__ = ["check_outputs_differ", "refuse_special_inputs", "refuse_to_overwrite"]
