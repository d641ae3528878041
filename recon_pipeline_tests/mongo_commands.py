"""MongoDB commands a test's client sends, seen through pymongo's command monitoring."""

from __future__ import annotations

from typing import Any

from pymongo import monitoring

READS = {"find", "aggregate", "count", "distinct"}


class Reads(monitoring.CommandListener):
    """Every read command on one collection, and the documents their replies carried."""

    def __init__(self, database: str, collection: str) -> None:
        self.database, self.collection = database, collection
        self.commands: list[dict[str, Any]] = []
        self.documents = 0
        self._ours: set[int] = set()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        name, command = event.command_name, event.command
        target = command.get("collection") if name == "getMore" else command.get(name)
        if event.database_name == self.database and target == self.collection:
            self._ours.add(event.request_id)
            if name in READS:
                self.commands.append(dict(command))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        if event.request_id in self._ours:
            cursor = event.reply.get("cursor") or {}
            self.documents += len(cursor.get("firstBatch") or cursor.get("nextBatch") or [])

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._ours.discard(event.request_id)
