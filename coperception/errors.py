"""Typed exceptions shared by every stage.

Each names what was wrong (file, field, value) in its message so that a user can fix the
input without reading a traceback.
"""


class CoperceptionError(Exception):
    """Base class of every error the library raises on bad input."""


class FormatError(CoperceptionError):
    """A dataset file is missing, malformed, or has a field of the wrong type or shape."""


class ConfigError(CoperceptionError):
    """A configuration file or value is invalid (unknown key, wrong type, impossible value)."""


class WireError(CoperceptionError):
    """Message bytes could not be decoded (bad magic, version, checksum, sizes or payload)."""


class BoxError(CoperceptionError, ValueError):
    """Boxes have the wrong shape, non-finite values or non-positive sizes."""


class BudgetError(CoperceptionError, ValueError):
    """A message does not fit the byte budget it was given (per link and frame)."""
