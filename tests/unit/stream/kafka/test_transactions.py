"""Exactly-once plumbing that needs no broker."""

from __future__ import annotations

import pytest

from models.errors import StreamrecError
from stream.config import Settings
from stream.kafka.transactions import check_delivery_mode


def test_delivery_mode_is_checked() -> None:
    assert Settings().delivery == "at_least_once"
    assert check_delivery_mode("exactly_once") == "exactly_once"
    with pytest.raises(StreamrecError, match="at_least_once or exactly_once"):
        check_delivery_mode("twice")
