"""Exceptions that carry a user-facing message; the CLI prints them as one line."""

from __future__ import annotations


class StreamrecError(Exception):
    """Base class: ``str(exc)`` is a complete sentence a user can act on."""


class DataFormatError(StreamrecError):
    """An input file does not have the format it was read as."""


class InvalidModelError(StreamrecError):
    """A model version is partial, corrupted or inconsistent and must not be served."""


class NoModelError(StreamrecError):
    """A tenant has no promoted model version yet."""


class InvalidSettingError(StreamrecError, ValueError):
    """A setting or argument outside what it may be (still a ValueError, for callers that
    validate input that way)."""
