"""The protocol's edges an independent sensor implementation found (issue 11): counters up to
2**64-1, JSON null in text fields, the empty batch, and the rounding rule for half milliseconds."""

from __future__ import annotations

import pytest
import pytest_asyncio

from node import catalog, senml
from tests.ingest_helpers import (
    BASE_TIME_MS,
    TRANSPORTS,
    assert_nothing_stored,
    assert_rejected,
    deliver,
    fresh_readings,
    seal_raw,
    senml_json,
    snapshot,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

NOW = 1_700_000_000.0  # the decoders take "now" from the hub's clock; these packs have absolute times


@pytest_asyncio.fixture(loop_scope="module")
async def live_hub(module_hub):
    return module_hub


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_counters_above_2_to_the_63_are_accepted_up_to_the_largest(live_hub, tmp_path, transport):
    """Before: 2**63 overflowed SQLite's signed integer (OverflowError, gRPC UNKNOWN, HTTP 500)."""
    sensor = await live_hub.add_sensor(tmp_path, f"big-{transport}")
    for counter in (2**63 - 1, 2**63, 2**63 + 1, 2**64 - 1):
        plaintext = senml.encode(fresh_readings(1))
        delivery = await deliver(live_hub, seal_raw(sensor, plaintext, counter=counter), transport)
        assert delivery.ok, delivery.message
        assert (await snapshot(live_hub)).last_counter(sensor) == counter
    before = await snapshot(live_hub)
    replay = seal_raw(sensor, senml.encode(fresh_readings(1)), counter=2**63 + 5)
    assert_rejected(await deliver(live_hub, replay, transport), "replayed")
    await assert_nothing_stored(live_hub, before, "replayed")


async def test_a_counter_below_2_to_the_63_is_a_replay_after_one_above(live_hub, tmp_path):
    """The stored (biased) counter keeps the order of the unsigned counters."""
    sensor = await live_hub.add_sensor(tmp_path, "order")
    assert (await deliver(live_hub, seal_raw(sensor, senml.encode(fresh_readings(1)), counter=2**63 + 1), "batch")).ok
    low = seal_raw(sensor, senml.encode(fresh_readings(1)), counter=2**62)
    assert_rejected(await deliver(live_hub, low, "batch"), "replayed")


@pytest.mark.parametrize("record", [
    {"n": "pm25", "v": 1.0, "u": None},
    {"n": None, "v": 1.0},
    {"bn": None, "n": "pm25", "v": 1.0},
    {"bu": None, "n": "pm25", "v": 1.0},
    {"n": "pm25", "v": 1.0, "u": 3},
    {"n": "pm25", "v": 1.0, "t": None},
    {"n": "pm25", "v": None},
])
async def test_null_and_wrong_typed_fields_are_refused_and_nothing_is_stored(live_hub, tmp_path, record):
    sensor = await live_hub.add_sensor(tmp_path, "nulls")
    before = await snapshot(live_hub)
    pack = [{"bt": BASE_TIME_MS / 1000}, record]
    assert_rejected(await deliver(live_hub, seal_raw(sensor, senml_json(pack)), "batch"), "malformed_senml")
    await assert_nothing_stored(live_hub, before, "malformed_senml")


async def test_the_empty_batch_is_refused_and_counted(live_hub):
    before = await snapshot(live_hub)
    delivery = await deliver(live_hub, [], "batch")
    assert_rejected(delivery, "malformed_frame")
    await assert_nothing_stored(live_hub, before, "malformed_frame")


async def test_half_milliseconds_round_half_up_in_both_decoders():
    """1546300800.0625 s is exactly 1546300800062.5 ms: half to even would give ...062."""
    metrics = {"pm25": catalog.dataset("air_quality").metrics["pm25"]}
    typed = senml_json([{"bt": 1546300800.0625, "n": "pm25", "v": 1.0}])
    general = senml_json([{"bt": 1546300800.0625, "bu": "ug/m3", "n": "pm25", "v": 1.0}, {"n": "pm25", "v": 2.0, "t": 0.001}])
    assert senml._decode_typed(typed, metrics) == [("pm25", 1546300800063, 1.0)]
    assert senml._decode_rows_json(typed, metrics, NOW) == [("pm25", 1546300800063, 1.0)]
    assert [ms for _, ms, _ in senml.decode_rows(general, metrics, NOW)] == [1546300800063, 1546300800064]
    assert senml.time_ms(2.0025) == 2003 and senml.time_ms(0.0015) == 2  # as computed in binary64


async def test_a_counter_stored_before_the_bias_migration_keeps_its_value(tmp_path):
    """Migration 5 moves existing counters into the biased column without losing order."""
    import sqlite3

    from node.storage.migrations import MIGRATIONS, migrate
    from node.storage.sqlite import SqliteStore

    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    for version, script in MIGRATIONS[:4]:
        conn.executescript(f"BEGIN;\n{script};\nPRAGMA user_version = {version};\nCOMMIT;")
    conn.execute("INSERT INTO sensors (sensor_id, dataset, metrics, latitude, longitude, wrapped_key, enrolled_at_ms, "
                 "last_counter) VALUES ('a', 'air_quality', '[]', 0, 0, x'00', 0, 9223372036854775807)")
    conn.execute("INSERT INTO sensors (sensor_id, dataset, metrics, latitude, longitude, wrapped_key, enrolled_at_ms) "
                 "VALUES ('b', 'air_quality', '[]', 0, 0, x'00', 0)")
    conn.close()
    store = SqliteStore(path)
    assert store.get_sensor("a").last_counter == 2**63 - 1 and store.get_sensor("b").last_counter == 0
    assert migrate(store.conn) == MIGRATIONS[-1][0]
    store.close()

