"""What a decoder builds for a target model besides it — a draft model, Medusa heads, an
EAGLE head — held until the decoder is asked to serve another target.

Every decoder with such a companion follows the same rule: ``prepare(target)`` builds it
(untimed, once per model), a test or trainer may hand over one built elsewhere, and
``generate`` builds it on first use when neither happened, or when the engine's model is
not the one it was built for. :class:`CompanionSlot` is that rule, once.
"""

from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


class CompanionSlot(Generic[T]):
    """One companion and the target model it was built for.

    Invariant: ``value`` is None or was built for ``target``. Targets are compared by
    identity (a decoder serves one loaded model at a time; another model object gets its
    own companion, even when it holds the same weights).
    """

    def __init__(self) -> None:
        self.value: T | None = None
        self.target: Any = None

    def put(self, target: Any, value: T) -> T:
        """Hold ``value`` as the companion of ``target``; returns it."""
        self.value, self.target = value, target
        return value

    def get(self, target: Any, build: Callable[[Any], T]) -> T:
        """The companion of ``target``: the one held, or ``build(target)`` (then held) when
        none is held for that model."""
        if self.value is None or self.target is not target:
            return self.put(target, build(target))
        return self.value
