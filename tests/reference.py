"""A pure-Python fold of the log: what every projection answer must equal."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PORTRAIT_SET = "Profile.CallbackPortraitSet"


@dataclass(frozen=True)
class LoggedEvent:
    """The parts of an event the profile projections depend on."""

    position: int
    sdkappid: int
    user_id: str
    event_time: int
    operator: str
    items: list[tuple[str, Any]]


@dataclass
class ReferenceFold:
    """Profiles and histories folded from events given in position order."""

    events: list[LoggedEvent] = field(default_factory=list)

    def add(self, event: LoggedEvent) -> None:
        self.events.append(event)

    def _changes(self, sdkappid: int, user_id: str) -> list[tuple[int, int, str, Any]]:
        """(event_time, position, tag, value) of the user's changes, last item per tag per event."""
        rows = []
        for e in self.events:
            if e.sdkappid == sdkappid and e.user_id == user_id:
                last: dict[str, Any] = {}
                for tag, value in e.items:
                    last[tag] = value
                rows.extend((e.event_time, e.position, tag, value) for tag, value in last.items())
        return sorted(rows)

    def profile(self, sdkappid: int, user_id: str, at: int | None = None) -> dict[str, Any]:
        """Per tag, the value with the greatest (event_time, position) at or before `at`."""
        result: dict[str, Any] = {}
        for event_time, _position, tag, value in self._changes(sdkappid, user_id):
            if at is None or event_time <= at:
                result[tag] = value
        return result

    def history(self, sdkappid: int, user_id: str) -> list[tuple[int, list[tuple[str, Any, Any]]]]:
        """Newest first: (position, [(tag, old, new)…] sorted by tag)."""
        previous: dict[str, Any] = {}
        by_position: dict[int, list[tuple[str, Any, Any]]] = {}
        order: dict[int, int] = {}
        for event_time, position, tag, value in self._changes(sdkappid, user_id):
            by_position.setdefault(position, []).append((tag, previous.get(tag), value))
            previous[tag] = value
            order[position] = event_time
        ordered = sorted(by_position, key=lambda p: (order[p], p), reverse=True)
        return [(p, sorted(by_position[p])) for p in ordered]
