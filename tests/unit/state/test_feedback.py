"""Feedback counters stay bounded whatever a producer puts in its feedback: a forged
rec_id naming version after version cannot add fields to a tenant's counters without
end."""

from __future__ import annotations

from state.feedback import MAX_VARIANTS, FeedbackRecorder


def test_forged_variants_add_a_bounded_number_of_fields() -> None:
    fb = FeedbackRecorder(bucket_s=60, clock=lambda: 1_000_030.0)
    fb.recommended("shop", "v1", 3)
    for batch in range(10):
        for i in range(1_000):
            fb.explicit("shop", f"v{batch * 1_000 + i + 2}", "click")
        fb.explicit("shop", "v1", "purchase")  # the variant in service is always counted
        _, commands = fb.take()
        fields = {cmd[2] for cmd in commands if cmd[0] == "HINCRBY"}
        assert "v1:b" in fields
    seen: set[str] = set()
    fb2 = FeedbackRecorder(bucket_s=60, clock=lambda: 1_000_030.0)
    for i in range(5_000):
        fb2.explicit("shop", f"v{i + 2}", "click")
        _, commands = fb2.take()
        seen |= {cmd[2].partition(":")[0] for cmd in commands if cmd[0] == "HINCRBY"}
    assert len(seen) <= MAX_VARIANTS
    # Another tenant has its own allowance.
    fb2.explicit("lab", "v7", "click")
    assert fb2.take()[1]
