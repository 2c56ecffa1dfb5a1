"""Plans: the ordered steps an operation needs, each knowing whether its result already exists.

``plan`` functions only read; :func:`apply` runs the missing steps in order and reports each. Every
step re-derives what it needs from the backends when it runs, so a run stopped after any step is
completed by planning and applying again, and a finished run plans to nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Plan", "Step", "apply"]


@dataclass(frozen=True)
class Step:
    """One resource: ``kind`` (topic, subscription, secret, site, bundle), its ``target`` name, and
    whether it is already ``done``; ``action`` makes it so."""

    kind: str
    target: str
    description: str
    done: bool
    action: Callable[[], None] = field(repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "target": self.target,
            "description": self.description,
            "status": "exists" if self.done else "pending",
        }


@dataclass(frozen=True)
class Plan:
    """What an operation on ``site_id`` consists of, in execution order."""

    operation: str
    site_id: str
    steps: tuple[Step, ...]

    @property
    def pending(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if not s.done)

    def to_json(self) -> dict[str, Any]:
        return {
            "operation": self.operation,
            "site_id": self.site_id,
            "steps": [s.to_json() for s in self.steps],
            "pending": len(self.pending),
        }


def apply(plan: Plan, on_step: Callable[[Step], None] | None = None) -> list[Step]:
    """Run the pending steps in order; ``on_step`` is told after each one completes."""
    done: list[Step] = []
    for step in plan.pending:
        step.action()
        done.append(step)
        if on_step is not None:
            on_step(step)
    return done
