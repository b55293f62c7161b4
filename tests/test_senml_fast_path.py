"""senml.decode_rows takes a fast path for the usual records; it must decide exactly as the
full validation does. A record with an extra "ut" field (accepted and ignored by SenML
decoding) never takes the fast path, so decoding a pack with and without "ut" compares the
two paths: same readings (bit for bit) or the same rejection."""

from __future__ import annotations

import json
import random

from node import catalog, senml
from node.errors import Rejected

AIR = {m: catalog.dataset("air_quality").metrics[m] for m in ("pm25", "temperature", "wind_speed", "rain")}
NOW = 1_700_000_000.0
GOOD = [("pm25", "ug/m3", -50, 2000), ("temperature", "Cel", -80, 70), ("wind_speed", "m/s", 0, 120), ("rain", "mm", 0, 500)]
ODD_VALUES = [5, True, None, "1", 1e999, -1e999, [1.0], 1e308]
ODD_TIMES = [5, True, None, "1", 1e999, -1e999, 0.0, -0.0, 2.0**28, -1546300800.0, 32503680000.0, 1e12]


def _outcome(pack: list) -> tuple:
    try:
        return ("ok", repr(senml.decode_rows(json.dumps(pack).encode(), AIR, now=NOW)))
    except Rejected as exc:
        return ("rejected", exc.reason, exc.message)


def _without_fast_path(pack: list) -> list:
    return [dict(r, ut=0) if isinstance(r, dict) and "v" in r else r for r in pack]


def _record(rng: random.Random) -> dict:
    metric, unit, low, high = rng.choice(GOOD)
    record: dict = {"n": metric, "v": rng.choice([rng.uniform(low, high), float(low), float(high), -0.0, low - 1e-9, high + 1e-9])}
    if rng.random() < 0.9:
        record["u"] = unit
    if rng.random() < 0.7:
        record["t"] = rng.choice([3600.0, 3600.0, 0.0, -0.0, rng.uniform(-1e6, 1e6)])
    roll = rng.random()
    if roll < 0.03:
        record["v"] = rng.choice(ODD_VALUES)
    elif roll < 0.06:
        record["t"] = rng.choice(ODD_TIMES)
    elif roll < 0.08:
        record["u"] = rng.choice([None, "", "K", 3, unit])
    elif roll < 0.10:
        record["n"] = rng.choice(["", "pm", "no2", 5, None])
    elif roll < 0.12:
        record[rng.choice(["ut", "bver", "bn", "bu", "bv", "bt", "vs", "s", "x_", "extra"])] = rng.choice([1, 1.5, "pm", "Cel", 11, True])
    elif roll < 0.13:
        del record["v"]
    return record


def _pack(rng: random.Random) -> list:
    pack: list = [_record(rng) for _ in range(rng.randint(1, 9))]
    pack[0]["bt"] = rng.choice([1546300800.0] * 6 + [0.0, 1000.0, 1546300800, 1e999, 32503680000.0])
    for field, choices in (("bn", ["", "pm", "wind_"]), ("bu", ["", "Cel", "mm"]), ("bv", [0.0, 1.5, -1e308])):
        if rng.random() < 0.08:
            rng.choice(pack)[field] = rng.choice(choices)
    if rng.random() < 0.1 and len(pack) > 2:
        pack[2]["bt"] = 1546300900.0  # a new base time mid-pack
    if rng.random() < 0.03:
        pack.insert(rng.randrange(len(pack) + 1), rng.choice([1, "x", [], None, {}]))
    return pack


def test_fast_path_decides_as_full_validation():
    rng = random.Random(20190101)
    accepted = 0
    for _ in range(20_000):
        pack = _pack(rng)
        fast, full = _outcome(pack), _outcome(_without_fast_path(pack))
        assert fast == full, pack
        accepted += fast[0] == "ok"
    assert 2_000 < accepted < 18_000  # both outcomes well exercised


def test_decode_is_decode_rows_as_readings():
    rng = random.Random(7)
    for _ in range(500):
        plaintext = json.dumps(_pack(rng)).encode()
        try:
            rows = senml.decode_rows(plaintext, AIR, now=NOW)
        except Rejected:
            continue
        assert senml.decode(plaintext, AIR, now=NOW) == [senml.Reading(*row) for row in rows]
