"""Reading a server-sent-events stream the way a browser's EventSource does."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Event:
    event: str
    data: Any
    id: str | None


def _parse(block: list[str]) -> Event | None:
    fields: dict[str, list[str]] = {}
    for line in block:
        if line.startswith(":"):
            continue  # a comment: the server's keep-alive ping
        name, _, value = line.partition(":")
        fields.setdefault(name, []).append(value.removeprefix(" "))
    if "data" not in fields:
        return None
    ids = fields.get("id")
    return Event(
        (fields.get("event") or ["message"])[-1], json.loads("\n".join(fields["data"])),
        ids[-1] if ids else None,
    )


class _Blocks:
    """Lines in, an event out at each blank line that ends one."""

    def __init__(self) -> None:
        self.block: list[str] = []

    def feed(self, line: str) -> Event | None:
        if line.strip("\r"):
            self.block.append(line.rstrip("\r"))
            return None
        block, self.block = self.block, []
        return _parse(block)


def events(lines: Iterable[str]) -> Iterator[Event]:
    blocks = _Blocks()
    for line in lines:
        if (event := blocks.feed(line)) is not None:
            yield event


async def aevents(lines: AsyncIterator[str]) -> AsyncIterator[Event]:
    blocks = _Blocks()
    async for line in lines:
        if (event := blocks.feed(line)) is not None:
            yield event
