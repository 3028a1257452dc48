"""Tables that fit the width they are printed at without ever wrapping or cutting a number.

Tables are read in 80-column CI logs, in files and through pipes, where Rich's own shrinking
folds a number over two lines (``0.00`` / ``624``) or cuts it (``1.…``). A :class:`FitTable`
instead chooses its layout when it is rendered, from the width it is given:

1. the table as built, every column at its natural width;
2. layer names shortened in the middle (:func:`shorten_names`), down to :data:`NAME_MIN`
   characters and only while each short name still identifies one layer;
3. a compact style (no outer border, one space of padding);
4. optional columns left out one by one, in the order the caller ranked them, with a line
   naming them;
5. a stacked layout, one ``header  value`` line per cell, when no table fits.

Number columns are ``no_wrap`` and get their natural width; only ``text`` columns (lists of
values, flags, notes) wrap, and only at spaces, so a number may move to the next line but is
never split. The widths are allocated here, so Rich never has to shrink a column itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rich import box
from rich.console import Console, ConsoleOptions, JustifyMethod, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

#: ``number``: never wraps; ``name``: a layer (or file) name, shortened in the middle;
#: ``text``: free text that may wrap at spaces (a list of values, flags, notes).
Kind = Literal["number", "name", "text"]
Cell = str | Text

ELLIPSIS = "…"
#: Names are not shortened below this many characters (columns are left out instead).
NAME_MIN = 14
#: A word of free text longer than this may be folded (paths); numbers are far shorter.
WORD_MAX = 24
#: Table styles, widest first: Rich's default, then borderless with one space of padding.
DEFAULT_STYLE: dict[str, Any] = {}
COMPACT_STYLE: dict[str, Any] = {
    "box": box.SIMPLE_HEAD,
    "show_edge": False,
    "pad_edge": False,
    "padding": (0, 1, 0, 0),
}
#: Key-value lists without borders or header (``info``'s sections, ``density``'s facts).
PLAIN_STYLE: dict[str, Any] = {
    "box": None,
    "show_header": False,
    "pad_edge": False,
    "padding": (0, 2, 0, 0),
}


@dataclass(frozen=True)
class Column:
    """One column of a :class:`FitTable`.

    Attributes:
        header: Column title.
        kind: How its cells may be fitted (see :data:`Kind`).
        justify: Cell alignment.
        drop: 0 for a column that is always shown; otherwise its rank among the columns
            left out when the table does not fit (1 goes first).
        style: Rich style of the whole column.
    """

    header: str
    kind: Kind = "number"
    justify: JustifyMethod = "right"
    drop: int = 0
    style: str = ""


# -- shortening names --------------------------------------------------------------------------
def _identifies(head: str, tail: str, name: str, names: Sequence[str]) -> bool:
    """Whether ``head…tail`` could stand for ``name`` and for no other of ``names``."""
    least = len(head) + len(tail) + 1
    return not any(
        other != name and len(other) >= least and other.startswith(head) and other.endswith(tail)
        for other in names
    )


def shorten(name: str, width: int, names: Sequence[str], separator: str = ".") -> str | None:
    """``name`` in at most ``width`` characters, its middle replaced by ``…``.

    Whole components (split at ``separator``) are kept where possible: as many of the end as
    fit (they tell ``layer.10.attention.self.query`` from its siblings), and of the start only
    as many as it takes to tell the name apart; otherwise characters, never cutting through a
    number. A short form must identify ``name`` among ``names``: no other name starts and ends
    the same way.

    Returns:
        The short form, or ``None`` when no short form of this width identifies ``name``.

    >>> names = [f"model.encoder.layer.{i}.attention.self.query" for i in (1, 10, 11)]
    >>> shorten(names[1], 30, names)
    '…layer.10.attention.self.query'
    >>> shorten(names[1], 24, names)
    '…10.attention.self.query'
    >>> shorten(names[0], 24, names)
    '….1.attention.self.query'
    >>> shorten(names[1], 16, names) is None
    True
    """
    if len(name) <= width:
        return name
    parts = name.split(separator)
    for keep_end in range(len(parts) - 1, 0, -1):
        tail = separator.join(parts[-keep_end:])
        for keep_start in range(len(parts) - keep_end):
            head = separator.join(parts[:keep_start])
            if len(head) + 1 + len(tail) > width:
                break
            if _identifies(head, tail, name, names):
                return head + ELLIPSIS + tail
    room = width - 1
    for start in range(max(0, room - len(name)), room + 1):
        head, tail = name[:start], name[len(name) - (room - start) :]
        splits_number = tail[:1].isdigit() and name[len(name) - len(tail) - 1].isdigit()
        if not splits_number and _identifies(head, tail, name, names):
            return head + ELLIPSIS + tail
    return None


def shorten_names(names: Sequence[str], width: int, separator: str = ".") -> list[str] | None:
    """Every name in at most ``width`` characters, each still telling its layer apart.

    Returns:
        The short names in order, or ``None`` when some name cannot be told apart at this width.
    """
    short = [shorten(name, width, names, separator) for name in names]
    if any(s is None for s in short):
        return None
    return [s for s in short if s is not None]


def _fold(name: str, width: int) -> str:
    """A name cut in the middle to ``width`` characters whether or not it stays unique."""
    if len(name) <= width or width < 2:
        return name
    room = width - 1
    return name[: room // 3] + ELLIPSIS + name[len(name) - (room - room // 3) :]


# -- the table ---------------------------------------------------------------------------------
def _text(cell: Cell) -> Text:
    return cell.copy() if isinstance(cell, Text) else Text(cell)


def _longest_word(text: str) -> int:
    return max((Text(word).cell_len for word in text.split()), default=0)


@dataclass(frozen=True)
class _Layout:
    """A fitted table: which columns, which style, the names and the text columns' widths."""

    kept: list[int]
    style: dict[str, Any]
    names: list[str] | None
    widths: dict[int, int]


class FitTable:
    """A table that lays itself out for the width it is rendered at (see the module's notes).

    Args:
        columns: The columns, at most one of kind ``name``.
        rows: One cell per column in each row; strings are plain text (no markup).
        title: A heading printed above the table (it wraps at spaces, like any text).
        styles: Table styles to try, widest first.
        separator: What separates the components of a name (``.`` for layers, ``/`` paths).
        stack_single_row: A one-row table (a summary) is stacked rather than losing columns.
    """

    def __init__(
        self,
        columns: Sequence[Column],
        rows: Sequence[Sequence[Cell]],
        *,
        title: str | None = None,
        styles: Sequence[dict[str, Any]] = (DEFAULT_STYLE, COMPACT_STYLE),
        separator: str = ".",
        stack_single_row: bool = True,
    ) -> None:
        if sum(c.kind == "name" for c in columns) > 1:
            raise ValueError("a FitTable has at most one name column")
        if any(len(row) != len(columns) for row in rows):
            raise ValueError("every row needs one cell per column")
        self.columns = list(columns)
        self.rows = [[_text(cell) for cell in row] for row in rows]
        self.title = title
        self.styles = list(styles)
        self.separator = separator
        self.stack_single_row = stack_single_row
        self._name = next((i for i, c in enumerate(columns) if c.kind == "name"), None)
        self._natural = [self._measure(i, widest=True) for i in range(len(columns))]
        self._least = [self._measure(i, widest=False) for i in range(len(columns))]

    def _measure(self, index: int, *, widest: bool) -> int:
        """A column's natural width, or the least it can take.

        The least is the natural width too, except for a text column: its longest word, up to
        :data:`WORD_MAX`.
        """
        column = self.columns[index]
        cells = [row[index] for row in self.rows]
        if widest or column.kind != "text":
            return max([Text(column.header).cell_len, *(cell.cell_len for cell in cells)])
        words = [_longest_word(column.header), *(_longest_word(cell.plain) for cell in cells)]
        return min(max(words), WORD_MAX)

    def _table(self, layout: _Layout, console: Console) -> Table:
        table = Table(**layout.style)
        for i in layout.kept:
            column = self.columns[i]
            table.add_column(
                column.header,
                justify=column.justify,
                style=column.style or None,
                no_wrap=column.kind != "text",
                overflow="fold" if column.kind == "text" else "ellipsis",
                width=layout.widths.get(i),
            )
        for row_index, row in enumerate(self.rows):
            cells = []
            for i in layout.kept:
                if i == self._name and layout.names is not None:
                    cells.append(Text(layout.names[row_index], style=row[i].style))
                else:
                    cells.append(row[i])
            table.add_row(*cells)
        return table

    def _chrome(self, kept: list[int], style: dict[str, Any], console: Console) -> int:
        """Width of borders and padding around ``kept`` columns, as Rich measures it."""
        probe = Table(**style)
        for _ in kept:
            probe.add_column(width=1)
        options = console.options.update_width(10_000)
        return Measurement.get(console, options, probe).maximum - len(kept)

    def _fit(
        self, kept: list[int], style: dict[str, Any], width: int, console: Console
    ) -> _Layout | None:
        """The layout of ``kept`` columns in ``style`` within ``width``, or ``None``.

        Free text is kept on one line if the names can give way for it, else it wraps.
        """
        return self._fit_text(kept, style, width, console, wrap=False) or self._fit_text(
            kept, style, width, console, wrap=True
        )

    def _fit_text(
        self, kept: list[int], style: dict[str, Any], width: int, console: Console, *, wrap: bool
    ) -> _Layout | None:
        texts = [i for i in kept if self.columns[i].kind == "text"]
        fixed = [i for i in kept if i not in texts and i != self._name]
        least = self._least if wrap else self._natural
        room = width - self._chrome(kept, style, console)
        room -= sum(self._natural[i] for i in fixed) + sum(least[i] for i in texts)
        names = None
        if self._name in kept:
            natural = self._natural[self._name]
            if room < natural:
                if room < min(NAME_MIN, natural):
                    return None
                header = Text(self.columns[self._name].header).cell_len
                plain = [row[self._name].plain for row in self.rows]
                names = shorten_names(plain, max(room, header), self.separator)
                if names is None:
                    return None
                natural = max([header, *(len(n) for n in names)])
            room -= natural
        if room < 0:
            return None
        widths = {i: least[i] for i in texts}
        for i in sorted(texts, key=lambda i: self._natural[i] - self._least[i]):
            extra = min(room // max(1, len(texts)), self._natural[i] - widths[i])
            widths[i] += extra
            room -= extra
        for i in texts:  # what is left over, to the first text column that can use it
            extra = min(room, self._natural[i] - widths[i])
            widths[i] += extra
            room -= extra
        return _Layout(kept, style, names, widths)

    def _layouts(self, width: int, console: Console) -> tuple[_Layout, list[str]] | None:
        """The first layout that fits, and the headers of the columns it leaves out."""
        every = list(range(len(self.columns)))
        order = sorted((c.drop, i) for i, c in enumerate(self.columns) if c.drop)
        for style in self.styles:
            layout = self._fit(every, style, width, console)
            if layout is not None:
                return layout, []
        if len(self.rows) <= 1 and self.stack_single_row:
            return None
        for count in range(1, len(order) + 1):
            left_out = {i for _, i in order[:count]}
            kept = [i for i in every if i not in left_out]
            layout = self._fit(kept, self.styles[-1], width, console)
            if layout is not None:
                return layout, [self.columns[i].header for i in sorted(left_out)]
        return None

    def _stacked(self, width: int) -> RenderResult:
        """One block per row: its name, then ``header  value`` for every other cell."""
        label = max((Text(c.header).cell_len for c in self.columns), default=0)
        for row in self.rows:
            if self._name is not None:
                name = row[self._name]
                yield Text(_fold(name.plain, width), style=name.style or "bold")
            grid = Table.grid(padding=(0, 2, 0, 0))
            grid.add_column(no_wrap=True, style="dim", min_width=min(label, width // 3))
            grid.add_column(overflow="fold")
            for i, column in enumerate(self.columns):
                if i != self._name:
                    grid.add_row(column.header, row[i])
            yield grid

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        """Render in the widest layout that fits ``options.max_width``."""
        width = options.max_width
        if self.title:
            yield Text(self.title, style="italic")
        found = self._layouts(width, console)
        if found is None:
            yield from self._stacked(width)
            return
        layout, left_out = found
        yield self._table(layout, console)
        if left_out:
            yield Text(
                f"not shown at {width} columns: {', '.join(left_out)} (all in --json)",
                style="dim",
            )

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        """From the narrowest stacked layout up to the table at its natural width."""
        natural = _Layout(list(range(len(self.columns))), self.styles[0], None, {})
        widest = Measurement.get(console, options, self._table(natural, console)).maximum
        return Measurement(min(NAME_MIN, widest), widest).with_maximum(options.max_width)
