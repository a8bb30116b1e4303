"""A trainer group's pass bookkeeping: what may be committed, and when a pass is done."""

from __future__ import annotations

import json

from stream.retrain.passes import Ledger, PassInfo, PassRecord, new_pass_id


def test_a_partition_is_committed_only_up_to_its_first_unfinished_record() -> None:
    ledger = Ledger()
    for offset in (10, 11, 12):
        ledger.take(0, offset)
    ledger.take(1, 5)
    ledger.finish(0, 11)  # tenants finish in any order
    ledger.finish(1, 5)
    assert ledger.to_commit() == {1: 6}  # partition 0 still waits for offset 10
    ledger.finish(0, 10)
    assert ledger.to_commit() == {0: 12}
    assert ledger.to_commit() == {}  # nothing moved since
    ledger.finish(0, 12)
    assert ledger.to_commit() == {0: 13}
    assert ledger.open() == 0


def test_a_partition_given_up_is_forgotten_and_its_late_finishes_ignored() -> None:
    ledger = Ledger()
    ledger.take(3, 0)
    ledger.take(3, 1)
    ledger.forget([3])
    ledger.finish(3, 0)  # its tenant ended after the partition went to another trainer
    assert ledger.to_commit() == {}
    assert ledger.open() == 0


def test_a_pass_is_done_when_the_group_committed_its_end_offsets_everywhere() -> None:
    info = PassInfo("p", 1.0, 1.0, 60.0, 5, starts={0: 100, 1: 7, 2: 0}, ends=None)
    assert info.left({}) is None and not info.done({})  # still being published
    info = info.published_at({0: 103, 1: 9})  # nothing written to partition 2
    assert info.left({}) == 5  # never committed: counted from where the pass began
    assert info.left({0: 102, 1: 9}) == 1
    assert not info.done({0: 102, 1: 9})
    assert info.done({0: 103, 1: 9})
    assert info.done({0: 150, 1: 9, 2: -1001})


def test_descriptions_and_records_survive_their_round_trip() -> None:
    info = PassInfo("p1", 2.5, 3.5, 86400.0, 2, starts={0: 1}, ends={0: 3, 11: 4})
    assert PassInfo.from_dict(info.to_dict()) == info
    assert PassInfo.from_dict({"id": "x"}) is None
    # The clicks topic's end offsets at publish time: what the group's archive must hold.
    info = PassInfo("p2", 2.5, 3.5, 86400.0, 2, ends={0: 3}, clicks={0: 70, 3: 12})
    assert PassInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info
    record = PassRecord("p1", "shop-1")
    assert PassRecord.from_json(record.to_json()) == record
    assert PassRecord.from_json(b"not json") is None
    assert PassRecord.from_json(b'{"tenant": "x"}') is None


def test_pass_ids_order_by_time() -> None:
    assert new_pass_id(1000.0) < new_pass_id(1000.5) < new_pass_id(10_000.0)
