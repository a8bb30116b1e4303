"""Feeding streamrec: the click producer helper apps use, replay, synthetic streams, load tests.

``from producers import ClickProducer`` is the app-facing API; ``producers.replay``,
``producers.synth`` and ``producers.loadtest`` back the ``streamrec replay | synth |
loadtest`` commands.
"""

from __future__ import annotations

from producers.client import ClickProducer, DeliveryStats
from stream.events import ClickEvent, InvalidEvent
from stream.kafka.delivery import DeliveryError

__all__ = ["ClickEvent", "ClickProducer", "DeliveryError", "DeliveryStats", "InvalidEvent"]
