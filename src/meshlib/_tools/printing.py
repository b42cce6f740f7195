"""Printing for the commands that watch something (`meshlib resolve --watch`)."""

from __future__ import annotations

__all__ = ["print_change"]


def print_change(text: str, last: object, *, watch: bool, as_json: bool) -> str:
    """Print `text` unless it is `last` (then nothing); under `--watch` (not
    `--json`) a `--` line follows each print. Returns `text`, the new `last`."""
    if text != last:
        print(text, flush=True)
        if watch and not as_json:
            print("--", flush=True)
    return text
