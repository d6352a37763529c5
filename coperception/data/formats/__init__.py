"""On-disk dataset formats, one module per format, each read AND written.

A format is chosen by name from :data:`FORMATS`. Every reader has ``keys() -> list[(scenario,
timestamp)]`` and ``read(key) -> Frame``; every writer is ``Writer(root, split, **options)`` with
``write(scenario, frame)`` and ``close()`` (and works as a context manager). Split names are the
library's ``train`` / ``validate`` / ``test``; :meth:`FormatSpec.split_name` maps them to the
format's own file or folder names (DAIR-V2X calls the validation split ``val``).
:class:`~coperception.data.formats.memory.MemoryReader` serves frames held in memory the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from coperception.data.formats.dair_v2x import DairV2XReader, DairV2XWriter
from coperception.data.formats.opv2v import OPV2VReader, OPV2VWriter
from coperception.errors import ConfigError
from coperception.data.formats.reader import Reader

SPLITS: tuple[str, ...] = ("train", "validate", "test")


@dataclass(frozen=True)
class FormatSpec:
    reader: type
    writer: type
    split_names: dict[str, str] = field(default_factory=dict)

    def split_name(self, split: str) -> str:
        return self.split_names.get(split, split)


FORMATS: dict[str, FormatSpec] = {
    "opv2v": FormatSpec(OPV2VReader, OPV2VWriter),
    "dair-v2x": FormatSpec(DairV2XReader, DairV2XWriter, {"validate": "val"}),
}


def get_format(name: str) -> FormatSpec:
    try:
        return FORMATS[name]
    except KeyError:
        raise ConfigError(f"unknown dataset format {name!r}; known: {sorted(FORMATS)}") from None


def open_reader(name: str, root, split: str, **options):
    """The reader of format ``name`` for the library split name ``split``."""
    spec = get_format(name)
    return spec.reader(root, spec.split_name(split), **options)


def open_writer(name: str, root, split: str, **options):
    """The writer of format ``name`` for the library split name ``split``."""
    spec = get_format(name)
    return spec.writer(root, spec.split_name(split), **options)


#: Name -> writer class / reader class (convenience views of FORMATS).
WRITERS = {name: spec.writer for name, spec in FORMATS.items()}
READERS = {name: spec.reader for name, spec in FORMATS.items()}

__all__ = ["FORMATS", "READERS", "Reader", "SPLITS", "WRITERS", "FormatSpec", "get_format", "open_reader", "open_writer"]
