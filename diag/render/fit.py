"""Tables that fit the terminal: a cell is made of pieces, and some are never cut.

A file:line, a function name or a primitive's label is only useful whole, so a table
cell here is a list of paragraphs of ``Piece``s, wrapped at piece boundaries.  A
``Piece`` is either whole (never cut), a path (its directory part shortened from the
left, ``…/shop/orders.py:123``, the file name and line kept) or free text (a word that
may be folded when nothing else will do).

A renderer offers several layouts, widest first (every column; then without the
low-value ones; then with columns merged); ``fit_table`` takes the first whose
unbreakable pieces all fit in the console's width, gives each column what it needs,
and hands rich explicit widths, so rich never has to cut anything itself.

Usage::

    cols = [Column("Where"), Column("Waited", justify="right")]
    rows = [[Cell.of([whole("app.py:12"), whole("fetch")]), Cell.of([word("5.0s")])]]
    console.print(fit_table([Layout(cols, rows)], console.width))
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from rich.cells import cell_len
from rich.table import Table
from rich.text import Text

from diag.render.formatting import safe_text

#: Free text narrower than this is not wrapped further (a column of 3 is unreadable).
FREE_FLOOR = 10
ELLIPSIS = "…"


@dataclass(frozen=True)
class Piece:
    """One unit of a cell; ``kind`` is ``whole``, ``path`` or ``free`` (see the module)."""

    text: str
    kind: str = "whole"

    @property
    def width(self) -> int:
        return cell_len(self.text)

    @property
    def min_width(self) -> int:
        if self.kind == "free":
            return min(self.width, FREE_FLOOR)
        if self.kind == "path":
            return cell_len(shortened_path(self.text, 0))
        return self.width

    def lines(self, width: int) -> list[str]:
        """The piece within ``width``: a path shortened, free text folded; a whole piece
        as it is (the layout gave its column room for it)."""
        if self.width <= width:
            return [self.text]
        if self.kind == "path":
            return [shortened_path(self.text, width)]
        return fold(self.text, width)  # a whole piece only when no layout had room for it


def whole(text: str) -> Piece:
    return Piece(safe_text(text), "whole")


def path(text: str) -> Piece:
    return Piece(safe_text(text), "path")


def word(text: str) -> Piece:
    return Piece(safe_text(text), "free")


#: A ``file.py:12`` in free text (a finding's evidence): kept whole like any other.
_PLACE = re.compile(r"\.pyx?:\d+")


def words(text: str) -> list[Piece]:
    """Free text as pieces, one a word; a word naming a file:line is whole."""
    return [whole(w) if _PLACE.search(w) else word(w) for w in text.split()]


def shortened_path(where: str, width: int) -> str:
    """``where`` (``dir/sub/file.py:12``) cut from the left at a ``/`` to fit ``width``,
    marked ``…/``; the file name and line always stay (so the result may be wider)."""
    if cell_len(where) <= width:
        return where
    head, sep, tail = where.rpartition("/")
    if not sep:
        return where
    kept = tail
    for part in reversed(head.split("/")):
        longer = f"{part}/{kept}"
        if cell_len(ELLIPSIS + "/" + longer) > width:
            break
        kept = longer
    return ELLIPSIS + "/" + kept


def fold(text: str, width: int) -> list[str]:
    out = []
    line = ""
    for ch in text:
        if cell_len(line + ch) > width and line:
            out.append(line)
            line = ""
        line += ch
    return out + [line] if line else out


@dataclass(frozen=True)
class Paragraph:
    """Pieces that flow together, starting on a line of their own."""

    pieces: tuple[Piece, ...]
    style: str = ""

    def natural(self) -> int:
        return sum(p.width for p in self.pieces) + max(0, len(self.pieces) - 1)

    def wrap(self, width: int) -> list[str]:
        lines: list[str] = []
        line = ""
        for piece in self.pieces:
            for part in piece.lines(width):
                if line and cell_len(line) + 1 + cell_len(part) <= width:
                    line += " " + part
                    continue
                if line:
                    lines.append(line)
                line = part
        if line:
            lines.append(line)
        return lines


@dataclass(frozen=True)
class Cell:
    paragraphs: tuple[Paragraph, ...]
    style: str = ""

    @classmethod
    def of(cls, *paragraphs: Iterable[Piece], style: str = "") -> Cell:
        return cls(tuple(Paragraph(tuple(p)) for p in paragraphs), style)

    def min_width(self) -> int:
        return max((p.min_width for para in self.paragraphs for p in para.pieces), default=0)

    def natural(self) -> int:
        return max((para.natural() for para in self.paragraphs), default=0)

    def widest_piece(self) -> int:
        return max((p.width for para in self.paragraphs for p in para.pieces), default=0)

    def text(self, width: int) -> Text:
        out = Text(style=self.style)
        first = True
        for para in self.paragraphs:
            for line in para.wrap(width) or [""]:
                if not first:
                    out.append("\n")
                out.append(line, style=para.style)
                first = False
        return out


@dataclass(frozen=True)
class Column:
    header: str
    justify: str = "left"
    #: Free text columns get at least this much (or their widest line, if narrower).
    floor: int = 0


@dataclass
class Layout:
    """Columns and the rows' cells for them; ``notes`` are printed under the table."""

    columns: Sequence[Column]
    rows: Sequence[Sequence[Cell]]
    show_lines: bool = False
    notes: list[str] = field(default_factory=list)

    def overhead(self) -> int:
        """Borders and padding: a rule before each column and after the last, and one
        space either side of every cell."""
        return 3 * len(self.columns) + 1

    def bounds(self) -> list[tuple[int, int, int]]:
        """(least, whole, natural) width of each column: with paths shortened; with every
        piece as it is (paths in full); with every paragraph on one line."""
        out = []
        for i, col in enumerate(self.columns):
            cells = [row[i] for row in self.rows]
            natural = max([cell_len(col.header)] + [c.natural() for c in cells])
            least = max([cell_len(col.header), min(col.floor, natural)] + [c.min_width() for c in cells])
            full = max([least] + [c.widest_piece() for c in cells])
            out.append((least, min(max(least, natural), full), max(least, natural)))
        return out

    def fits(self, width: int) -> bool:
        return sum(b[0] for b in self.bounds()) + self.overhead() <= width

    def widths(self, width: int) -> list[int]:
        """Every column at its natural width if they fit.  Else each at its least, raised
        first towards showing every piece whole (paths in full; at most half the room to
        one column), then towards its natural width: at each step the columns that lack
        least get all they lack (so fewest cells wrap), and the room left is shared among
        the rest in proportion to their lack."""
        bounds = self.bounds()
        room = width - self.overhead()
        if sum(b[2] for b in bounds) <= room:
            return [b[2] for b in bounds]
        widths = [b[0] for b in bounds]
        while sum(widths) > room and max(widths) > 1:  # nothing fits: the widest give way
            widths[widths.index(max(widths))] -= 1
        spare = room - sum(widths)
        # pieces whole first, but no column takes more than half the room for it
        widths = _share(widths, [min(max(0, b[1] - w), spare // 2) for b, w in zip(bounds, widths)], spare)
        return _share(widths, [max(0, b[2] - w) for b, w in zip(bounds, widths)], room - sum(widths))


def _share(widths: list[int], lacking: list[int], spare: int) -> list[int]:
    """``widths`` raised by up to ``lacking`` within ``spare`` (see ``Layout.widths``)."""
    widths, lacking = list(widths), list(lacking)
    for i in sorted(range(len(widths)), key=lambda i: (lacking[i], i)):
        if 0 < lacking[i] <= spare // 2:  # never all the room to one column
            widths[i] += lacking[i]
            spare -= lacking[i]
            lacking[i] = 0
    total = sum(lacking)
    if spare <= 0 or total <= 0:
        return widths
    if total <= spare:
        return [w + lack for w, lack in zip(widths, lacking)]
    shares = [spare * lack / total for lack in lacking]
    given = [int(s) for s in shares]
    # the columns with the largest remainders get the last few cells
    left = spare - sum(given)
    for i in sorted(range(len(shares)), key=lambda i: (given[i] - shares[i], i))[:left]:
        given[i] += 1
    return [w + g for w, g in zip(widths, given)]


def choose(layouts: Sequence[Layout], width: int) -> Layout:
    """The first layout whose unbreakable pieces fit ``width``; the last one otherwise."""
    for layout in layouts:
        if layout.fits(width):
            return layout
    return layouts[-1]


def fit_table(layouts: Sequence[Layout], width: int, *, header_style: str = "bold") -> tuple[Table, list[str]]:
    """The chosen layout as a rich ``Table`` sized for ``width``, and its notes."""
    layout = choose(layouts, width)
    widths = layout.widths(width)
    table = Table(header_style=header_style, show_lines=layout.show_lines)
    for col, w in zip(layout.columns, widths):
        table.add_column(col.header, justify=col.justify, width=w, no_wrap=True,  # type: ignore[arg-type]
                         overflow="fold")
    for row in layout.rows:
        table.add_row(*(cell.text(w) for cell, w in zip(row, widths)))
    return table, layout.notes


class Legend:
    """Footnote markers for long, repeated notes: ``mark(text)`` gives ``¹``, ``²``...
    once per distinct text; ``lines()`` explains each under the table."""

    SUPERSCRIPTS = "¹²³⁴⁵⁶⁷⁸⁹"

    def __init__(self) -> None:
        self.notes: dict[str, str] = {}

    def mark(self, text: str) -> str:
        marker = self.notes.get(text)
        if marker is None:
            n = len(self.notes)
            marker = self.SUPERSCRIPTS[n] if n < len(self.SUPERSCRIPTS) else f"({n + 1})"
            self.notes[text] = marker
        return marker

    def lines(self) -> list[str]:
        return [f"{marker} {text}" for text, marker in self.notes.items()]
