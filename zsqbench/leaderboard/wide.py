"""``--wide`` tables stay readable: never squeezed into 2-3-character columns.

A rich table narrower than it needs folds every cell (at 80 columns ``leaderboard show --wide`` was 573 lines of
2-3-character columns). Instead the console is widened to the table's natural width, so each row stays one line
(scroll sideways, ``less -S``), and on a terminal one line on stderr says how wide it is and what to do."""
from __future__ import annotations

import sys


def fit(console, table) -> None:
    """Widen ``console`` to ``table``'s natural width when the terminal is narrower, saying so on a terminal."""
    needed = console.measure(table, options=console.options.update_width(100_000)).maximum
    if needed <= console.width:
        return
    if console.is_terminal:
        print(f"note: the --wide table is {needed} columns wide and this terminal has {console.width}: widen the "
              f"terminal, pipe into `less -S`, or use --json; it follows unwrapped", file=sys.stderr)
    console.width = needed
