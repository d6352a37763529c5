"""The reader contract: what the dataset needs from any source of frames (a format on disk, frames
in memory, the closed loop's live world)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from coperception.structures.records import Frame


@runtime_checkable
class Reader(Protocol):
    """``keys()``: every frame's ``(scenario, timestamp)`` in time order within a scenario;
    ``read(key)``: that frame in the library convention, or a ``FormatError`` naming the file."""

    def keys(self) -> list[tuple[str, int]]: ...

    def read(self, key: tuple[str, int]) -> Frame: ...
