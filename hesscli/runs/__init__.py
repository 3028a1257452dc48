"""Orchestration: one module per command, mirroring :mod:`hesscli.cli.commands`. No printing.

Each ``run_*`` loads the problem (:func:`hesscli.runs.prepare.prepare`), builds the curvature
operator over the selected layers, hands its matmat to an algorithm, and wraps what comes back
in the result objects of :mod:`hesscli.results`. Progress reaches the caller through callbacks
(:mod:`hesscli.runs.progress`). What two commands share is a public function of one module:
:mod:`~hesscli.runs.plans` (sizes and memory plans), :mod:`~hesscli.runs.outcomes` (result
objects), ``report``'s :func:`~hesscli.runs.report.measure` for ``check`` and ``compare``.
The CLI reaches the layers below only through this package (:mod:`~hesscli.runs.session`,
:mod:`~hesscli.runs.files`).
"""
