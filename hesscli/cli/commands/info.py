"""``hesscli info``: model, checkpoint, data and loss summary, with loss and gradient norm."""

from __future__ import annotations

from hesscli.cli.output import emit, stderr_console
from hesscli.cli.render.info_table import info_renderable
from hesscli.cli.run_options import RunOptions, with_run_options
from hesscli.runs.files import refuse_to_overwrite
from hesscli.runs.info import run_info


@with_run_options(leave_out=("hvp_method",))
def info(
    run: RunOptions,
) -> None:
    """Summarise a checkpoint: layers, key match, data, loss, and the gradient at it.

    A sanity check before any curvature run: one forward/backward pass, no Hessian products.
    """
    refuse_to_overwrite(run.output, run.named_inputs())
    request = run.request(locals())
    with stderr_console().status("loading and running one forward/backward pass"):
        report = run_info(request, layer_patterns=run.layers)
    refuse_to_overwrite(run.output, report.input_files)
    emit(report, as_json=run.json, output=run.output, table=info_renderable)
