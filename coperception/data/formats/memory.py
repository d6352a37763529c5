"""Frames already in memory, served through the reader interface (``keys()`` / ``read(key)``).

For frames that never touch the disk: the simulator's output fed straight to a
:class:`~coperception.data.dataset.CooperativeDataset` (closed loop, quick experiments) and tests.
"""

from __future__ import annotations

from typing import Iterable

from coperception.structures.records import Frame
from coperception.errors import FormatError


class MemoryReader:
    """frames: Frames with unique ``(scenario, timestamp)``; kept in the given order."""

    def __init__(self, frames: Iterable[Frame]) -> None:
        self.frames: dict[tuple[str, int], Frame] = {}
        for f in frames:
            key = (f.scenario, f.timestamp)
            if key in self.frames:
                raise FormatError(f"MemoryReader: two frames share scenario {f.scenario!r}, timestamp {f.timestamp}")
            self.frames[key] = f

    def keys(self) -> list[tuple[str, int]]:
        return list(self.frames)

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> Frame:
        return self.read(self.keys()[index])

    def read(self, key: tuple[str, int]) -> Frame:
        try:
            return self.frames[tuple(key)]
        except KeyError:
            raise FormatError(f"MemoryReader: no frame {key!r}") from None
