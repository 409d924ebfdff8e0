"""The console every command prints to (one definition for ``cli`` and its sub-parsers)."""

from __future__ import annotations

from rich.console import Console


def terminal_console() -> Console:
    """Terminal output; when piped to a file, wide enough for the result table."""
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=max(console.width, 160))
    return console
