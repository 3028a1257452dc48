"""Options for text data (JSONL, CSV, a saved ``datasets`` folder), declared once.

Kept beside :mod:`hesscli.cli.options` (which holds the other shared options) so that neither
module grows past a readable size; the names are part of the same public contract.
"""

from __future__ import annotations

from typing import Annotated

import typer

_INPUT = "Inputs"

TextField = Annotated[
    str | None,
    typer.Option(
        "--text-field",
        metavar="NAME",
        help="Field (JSONL key, CSV column, dataset column) holding the text that the "
        "checkpoint folder's tokenizer encodes. Default: text.",
        rich_help_panel=_INPUT,
    ),
]
LabelField = Annotated[
    str | None,
    typer.Option(
        "--label-field",
        metavar="NAME",
        help="Field holding the class label (an integer, or a name from the model's "
        "label2id). Default: label. A causal LM needs none: its labels are the tokens.",
        rich_help_panel=_INPUT,
    ),
]
MaxLength = Annotated[
    int | None,
    typer.Option(
        "--max-length",
        min=1,
        metavar="TOKENS",
        help="Truncate texts to this many tokens. Default: the tokenizer's model_max_length "
        "(else the model's maximum positions).",
        rich_help_panel=_INPUT,
    ),
]
