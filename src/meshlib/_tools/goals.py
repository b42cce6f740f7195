"""The one met/missed mark every figure of `meshlib bench` carries."""

from __future__ import annotations

__all__ = ["MET", "MISSED", "NOT_RUN", "NO_GOAL", "mark"]

MET = "met"
MISSED = "MISSED"
#: a figure shown for context, without a goal of its own
NO_GOAL = "-"
#: a goal that compares with something this run did not measure (Envoy)
NOT_RUN = "n/a"


def mark(ok: bool | None, *, has_goal: bool = True) -> str:
    """`met` or `MISSED` for a goal; `n/a` when its comparison was not run."""
    if not has_goal:
        return NO_GOAL
    if ok is None:
        return NOT_RUN
    return MET if ok else MISSED
