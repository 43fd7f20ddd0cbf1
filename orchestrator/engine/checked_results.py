"""The ``result`` outputs the engine read and checked as their stages finished, kept
until their runs end, when result.json is composed from them.

Without it each published result is read from S3 twice per run: once to check it when
its stage finishes, and again a tick or so later to compose result.json. In memory
only: after a restart, or for a result too large to keep, the engine reads it again
(and checks it again), as it always did.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

#: What the kept results may weigh together, in bytes as stored in S3 (parsed, they
#: take three to four times that in memory); the oldest go first past it. Hundreds of
#: typical results (tens of KB each): a result is kept for a tick or two, until its
#: run ends, so even 10,000 clips a minute keep a few hundred at a time.
DEFAULT_BUDGET = 16 * 2**20


class CheckedResults:
    def __init__(
        self, budget_bytes: int = DEFAULT_BUDGET, largest_bytes: int | None = None
    ) -> None:
        self.budget_bytes = budget_bytes
        #: A rare giant is read again rather than kept, not to crowd out the others.
        self.largest_bytes = budget_bytes // 16 if largest_bytes is None else largest_bytes
        self._kept: OrderedDict[str, tuple[str, dict[str, Any], int]] = OrderedDict()
        self._bytes = 0

    def keep(self, attempt_id: str, name: str, result: dict[str, Any], size: int) -> None:
        """What attempt ``attempt_id`` published as ``name``, checked; ``size`` bytes."""
        self.drop(attempt_id)
        if size > self.largest_bytes:
            return
        self._kept[attempt_id] = (name, result, size)
        self._bytes += size
        while self._bytes > self.budget_bytes:
            _, (_, _, dropped) = self._kept.popitem(last=False)
            self._bytes -= dropped

    def take(self, attempt_id: str, name: str) -> dict[str, Any] | None:
        """The result kept for that attempt under that name (and forgets it), or None."""
        kept = self._kept.pop(attempt_id, None)
        if kept is None:
            return None
        self._bytes -= kept[2]
        return kept[1] if kept[0] == name else None

    def drop(self, attempt_id: str) -> None:
        kept = self._kept.pop(attempt_id, None)
        if kept is not None:
            self._bytes -= kept[2]

    def __len__(self) -> int:
        return len(self._kept)
