"""Exactly-once plumbing that needs no broker."""

from __future__ import annotations

import pytest
from confluent_kafka import Consumer

from models.errors import StreamrecError
from stream.config import Settings
from stream.kafka.transactions import check_delivery_mode, group_metadata


def test_group_metadata_is_what_librdkafka_writes() -> None:
    consumer = Consumer({"bootstrap.servers": "127.0.0.1:1", "group.id": "g-1"})
    try:
        theirs = consumer.consumer_group_metadata()
    finally:
        consumer.close()
    assert group_metadata("g-1", -1, "") == theirs
    assert group_metadata("g", 7, "m-1").startswith(b"CGMDv2:")


def test_delivery_mode_is_checked() -> None:
    assert Settings().delivery == "at_least_once"
    assert check_delivery_mode("exactly_once") == "exactly_once"
    with pytest.raises(StreamrecError, match="at_least_once or exactly_once"):
        check_delivery_mode("twice")
