"""The rekey grace as a property of the store's commit (real SQLite files): for any sequence
of frames under the old and the new key, at any times, after a rekey with any grace, a frame
under the old key is committed exactly when it arrives before the grace ends and before the
first committed frame under the new key; frames under the new key always are; the counter
goes on across both."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.storage.base import CounterConflict, FrameToCommit, SensorRecord
from node.storage.sqlite import SqliteStore

SENSOR = "ab" * 16
REKEY_AT = 1_000_000

frames_strategy = st.lists(st.tuples(st.booleans(), st.integers(0, 5_000)), min_size=1, max_size=12)  # (old key?, ms later)


@settings(max_examples=40, deadline=None)
@given(grace_ms=st.integers(0, 10_000), frames=frames_strategy)
def test_old_key_frames_commit_only_within_the_grace_and_before_the_switch(grace_ms, frames):
    with tempfile.TemporaryDirectory() as directory:
        store = SqliteStore(Path(directory) / "hub.db")
        try:
            store.add_sensor(SensorRecord(SENSOR, "air_quality", ["pm25"], 58.9, 5.7, b"old", 0))
            _, changed = store.rekey_sensor(SENSOR, b"new", None, REKEY_AT, REKEY_AT + grace_ms)
            assert changed
            now, switched, last_committed = REKEY_AT, False, 0
            for counter, (old_key, later) in enumerate(frames, start=1):
                now += later
                frame = FrameToCommit(SENSOR, counter, [("pm25", counter, 1.0)], now, under_previous_key=old_key)
                expected = not old_key or (now < REKEY_AT + grace_ms and not switched)
                try:
                    store.commit_frames([frame])
                    committed = True
                except CounterConflict as conflict:
                    committed = False
                    assert conflict.key_retired and old_key
                assert committed == expected, (old_key, now, switched)
                last_committed = counter if committed else last_committed
                switched = switched or not old_key
            record = store.get_sensor(SENSOR)
            assert record is not None
            assert record.last_counter == last_committed  # one counter, across both keys
        finally:
            store.close()


def test_a_rekey_of_a_revoked_or_unknown_sensor_changes_nothing(tmp_path):
    store = SqliteStore(tmp_path / "hub.db")
    try:
        assert store.rekey_sensor(SENSOR, b"new", "r1", REKEY_AT, REKEY_AT) == (None, False)
        store.add_sensor(SensorRecord(SENSOR, "air_quality", ["pm25"], 58.9, 5.7, b"old", 0))
        store.revoke_sensor(SENSOR, 5)
        record, changed = store.rekey_sensor(SENSOR, b"new", "r1", REKEY_AT, REKEY_AT)
        assert not changed and record is not None and record.wrapped_key == b"old" and record.key_request_id is None
    finally:
        store.close()


@pytest.mark.parametrize("request_id", ["same", None])
def test_a_retried_request_id_changes_nothing(tmp_path, request_id):
    store = SqliteStore(tmp_path / "hub.db")
    try:
        store.add_sensor(SensorRecord(SENSOR, "air_quality", ["pm25"], 58.9, 5.7, b"old", 0))
        first, _ = store.rekey_sensor(SENSOR, b"new-1", request_id, REKEY_AT, REKEY_AT + 10)
        again, changed = store.rekey_sensor(SENSOR, b"new-2", request_id, REKEY_AT + 1, REKEY_AT + 20)
        assert again is not None and first is not None
        if request_id:
            assert not changed and again.wrapped_key == b"new-1"
        else:  # a rekey without a request id is a new rekey; the sensor never used new-1, so "old" stays the previous key
            assert changed and again.wrapped_key == b"new-2" and again.previous_wrapped_key == b"old"
    finally:
        store.close()
