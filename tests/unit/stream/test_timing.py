from __future__ import annotations

import pytest

from stream.timing import backoff, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("30m", 1800), ("1h", 3600), (" 7d ", 604800), ("1.5h", 5400)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "soon", "-1h", "1w", "h", "1 h x"])
def test_parse_duration_rejects_saying_what_a_duration_looks_like(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration: give a duration like 30m"):
        parse_duration(text)


def test_backoff_doubles_from_the_base_up_to_the_cap() -> None:
    assert [backoff(n, 0.2, 5.0) for n in range(1, 8)] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]


def test_backoff_with_jitter_stays_in_the_upper_half_of_the_pause() -> None:
    pauses = [backoff(3, 0.1, 5.0, jitter=True) for _ in range(200)]
    assert all(0.2 <= p <= 0.4 for p in pauses)
    assert len(set(pauses)) > 100  # spread, not one value
