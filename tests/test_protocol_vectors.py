"""docs/protocol.md is executable: its test vectors, tables and constants must match the code.

The document is parsed, not copied: every ```test-vector block is recomputed with
node.frames.seal and fed through the hub's ingest path; the rejection tables are compared with
node.errors.Reason (and with the reasons the ingest code actually raises); the metric table,
the constants block, the credential field table and the copy of ingest.proto are compared with
the code. Changing either the document or the code without the other fails here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from node import catalog, frames, ingest, senml, sensors
from node.app import http_app
from node.app.servicers import common as servicer_common
from node.clock import SYSTEM_CLOCK
from node.errors import Reason, Rejected
from node.storage import Storage
from node.storage.base import SensorRecord

REPO_ROOT = Path(__file__).resolve().parents[1]
DOC = REPO_ROOT / "docs" / "protocol.md"
INGEST_PROTO = REPO_ROOT / "proto" / "smartregion" / "v1" / "ingest.proto"
# Modules on the ingest path; every Reason they name must be in the doc's ingest table.
INGEST_MODULES = ["node/frames.py", "node/senml.py", "node/ingest.py", "node/app/http_app.py", "node/app/servicers/ingest.py"]


# -- parsing -------------------------------------------------------------------------------

def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def fenced_blocks(text: str, info: str) -> list[str]:
    return re.findall(rf"^```{re.escape(info)}[ \t]*\n(.*?)^```[ \t]*$", text, re.MULTILINE | re.DOTALL)


def parse_fields(block: str) -> dict[str, str]:
    """`name = value` lines; a line starting with whitespace continues the previous value."""
    fields: dict[str, str] = {}
    last = None
    for line in block.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0] in " \t":
            assert last is not None, f"continuation line without a field: {line!r}"
            fields[last] += line.strip()
            continue
        name, sep, value = line.partition("=")
        assert sep, f"not a `name = value` line: {line!r}"
        name = name.strip()
        assert name not in fields, f"field {name!r} given twice"
        fields[name] = value.strip()
        last = name
    return fields


def table_after(text: str, marker: str) -> list[list[str]]:
    """The rows (cells stripped) of the markdown table following an HTML comment marker."""
    start = text.index(f"<!-- {marker}")
    lines = text[start:].splitlines()[1:]
    rows = []
    for line in lines:
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows.append(cells)
    _header, separator, *body = rows
    assert set("".join(separator)) <= set("-: "), f"no table after marker {marker!r}"
    return body


def code(cell: str) -> str:
    return cell.strip().strip("`")


@dataclass
class Vector:
    name: str
    f: dict[str, str]

    def hex(self, field: str) -> bytes:
        value = self.f[field]
        assert re.fullmatch(r"[0-9a-f]*", value), f"{self.name}: {field} is not lowercase hex"
        return bytes.fromhex(value)

    @property
    def key(self) -> bytes:
        return self.hex("key")

    @property
    def hub_id(self) -> bytes:
        return self.hex("hub_id")

    @property
    def sensor_id(self) -> bytes:
        return self.hex("sensor_id")

    @property
    def counter(self) -> int:
        return int(self.f["counter"])

    @property
    def frame(self) -> bytes:
        return self.hex("frame")

    @property
    def plaintext(self) -> bytes:
        return self.hex("plaintext")

    def readings(self) -> list[tuple[str, int, float]]:
        out = []
        for item in self.f["readings"].split(";"):
            metric, time_ms, value = item.split()
            out.append((metric, int(time_ms), float(value)))
        return out


def load_vectors() -> list[Vector]:
    vectors = []
    for block in fenced_blocks(doc_text(), "test-vector"):
        fields = parse_fields(block)
        vectors.append(Vector(fields["name"], fields))
    return vectors


VECTORS = load_vectors()
ACCEPTED = [v for v in VECTORS if v.f.get("expect") == "accept"]
REJECTED = [v for v in VECTORS if v.f.get("expect") == "reject"]
BY_NAME = {v.name: v for v in VECTORS}
AIR_METRICS = catalog.DATASETS["air_quality"].metrics


def ids(vectors):
    return [v.name for v in vectors]


# -- the vectors ---------------------------------------------------------------------------

def test_the_document_has_enough_vectors():
    assert len(VECTORS) == len({v.name for v in VECTORS}), "vector names must be unique"
    assert all(v.f.get("expect") in ("accept", "reject") for v in VECTORS)
    assert len(ACCEPTED) >= 3
    assert len(REJECTED) >= 1


@pytest.mark.parametrize("v", ACCEPTED, ids=ids(ACCEPTED))
def test_accepted_vector_is_what_seal_produces(v: Vector):
    header = frames.FrameHeader(v.hub_id, v.sensor_id, v.counter)
    assert len(v.key) == frames.KEY_SIZE
    assert len(v.hub_id) == len(v.sensor_id) == 16
    assert v.hex("header") == header.pack()
    assert v.hex("nonce") == frames.nonce_for(v.counter)
    assert v.hex("aad") == frames.AAD_DOMAIN + header.pack()
    assert v.plaintext == v.f["plaintext_utf8"].encode("utf-8")
    sealed = frames.seal(v.key, header, v.plaintext)
    assert sealed.hex() == v.f["frame"], f"{v.name}: node.frames.seal no longer produces the documented frame"
    assert v.frame == v.hex("header") + v.hex("ciphertext") + v.hex("tag")
    assert len(v.hex("tag")) == frames.TAG_SIZE


# -- an independent AES-GCM: the layout of docs/protocol.md sections 4 and 5, built by hand ------------

def documented_header(v: Vector) -> bytes:
    """Version 0x01, hub id (16), sensor id (16), counter (8, big-endian): 41 bytes."""
    header = b"\x01" + v.hub_id + v.sensor_id + v.counter.to_bytes(8, "big")
    assert len(header) == 41
    return header


def documented_nonce(v: Vector) -> bytes:
    """Four zero bytes, then the counter as 8 bytes big-endian."""
    return bytes(4) + v.counter.to_bytes(8, "big")


def documented_aad(v: Vector) -> bytes:
    """The 20 ASCII bytes `smartregion/v1/frame`, one NUL, then the header: 62 bytes."""
    domain = "smartregion/v1/frame".encode("ascii")
    assert len(domain) == 20
    return domain + b"\x00" + documented_header(v)


@pytest.mark.parametrize("v", ACCEPTED, ids=ids(ACCEPTED))
def test_accepted_vector_is_standard_aes_gcm_under_the_documented_nonce_and_aad(v: Vector):
    """Not node.frames: `cryptography`'s AESGCM with the nonce and AAD the document describes."""
    assert (v.hex("header"), v.hex("nonce"), v.hex("aad")) == (documented_header(v), documented_nonce(v), documented_aad(v))
    assert len(v.hex("aad")) == 62
    sealed = AESGCM(v.key).encrypt(documented_nonce(v), v.plaintext, documented_aad(v))
    assert sealed == v.hex("ciphertext") + v.hex("tag"), f"{v.name}: the documented ciphertext is not AES-256-GCM of the plaintext"
    assert v.frame == documented_header(v) + sealed
    assert AESGCM(v.key).decrypt(documented_nonce(v), v.frame[41:], documented_aad(v)) == v.plaintext


@pytest.mark.parametrize("v", REJECTED, ids=ids(REJECTED))
def test_rejected_vector_fails_standard_aes_gcm_under_the_documented_nonce_and_aad(v: Vector):
    assert (v.hex("header"), v.hex("nonce"), v.hex("aad")) == (documented_header(v), documented_nonce(v), documented_aad(v))
    assert v.frame[:41] == documented_header(v)
    with pytest.raises(InvalidTag):
        AESGCM(v.key).decrypt(documented_nonce(v), v.frame[41:], documented_aad(v))


def test_the_documented_aad_domain_constant_is_the_ascii_prefix():
    (constants,) = fenced_blocks(doc_text(), "constants")
    assert bytes.fromhex(parse_fields(constants)["aad_domain"]) == b"smartregion/v1/frame\x00"


@pytest.mark.parametrize("v", ACCEPTED, ids=ids(ACCEPTED))
def test_accepted_vector_opens_to_its_plaintext(v: Vector):
    header, plaintext = frames.open_frame(v.key, v.frame)
    assert (header.hub_id, header.sensor_id, header.counter) == (v.hub_id, v.sensor_id, v.counter)
    assert plaintext == v.plaintext


@pytest.mark.parametrize("v", ACCEPTED, ids=ids(ACCEPTED))
def test_accepted_vector_holds_the_documented_readings(v: Vector):
    decoded = senml.decode(v.plaintext, AIR_METRICS, SYSTEM_CLOCK.now_ms() / 1000)
    assert [(r.metric, r.time_ms, r.value) for r in decoded] == v.readings()


@pytest.mark.parametrize("v", REJECTED, ids=ids(REJECTED))
def test_rejected_vector_does_not_open(v: Vector):
    with pytest.raises(frames.InvalidTag):
        frames.open_frame(v.key, v.frame)
    # The documented header, nonce and AAD are what the hub derives from the received frame.
    header = frames.parse_header(v.frame)
    assert (header.hub_id, header.sensor_id, header.counter) == (v.hub_id, v.sensor_id, v.counter)
    assert v.hex("header") == v.frame[: frames.HEADER_SIZE] == header.pack()
    assert v.hex("nonce") == frames.nonce_for(v.counter)
    assert v.hex("aad") == frames.AAD_DOMAIN + header.pack()
    assert v.plaintext == v.f["plaintext_utf8"].encode("utf-8")


@pytest.mark.parametrize("v", REJECTED, ids=ids(REJECTED))
def test_rejected_vector_is_its_base_with_one_byte_changed(v: Vector):
    base = BY_NAME[v.f["derived_from"]]
    assert base.f["expect"] == "accept"
    offset = int(v.f["tampered_offset"])
    assert len(v.frame) == len(base.frame)
    differing = [i for i, (a, b) in enumerate(zip(v.frame, base.frame, strict=True)) if a != b]
    assert differing == [offset]
    assert v.plaintext == base.plaintext and v.key == base.key


@pytest.mark.parametrize("v", REJECTED, ids=ids(REJECTED))
def test_rejected_vector_documents_the_hubs_answer(v: Vector):
    reason = Reason[v.f["reason"].upper()]
    assert reason.label == v.f["reason"]
    assert reason.grpc_code == v.f["grpc_status"]
    assert reason.http_status == int(v.f["http_status"])


async def test_the_hub_answers_every_vector_as_documented(tmp_path):
    """Enrol the vectors' sensors at a hub with the vectors' hub id and submit them in order."""
    hub_ids = {v.hub_id for v in VECTORS}
    assert len(hub_ids) == 1, "all vectors are addressed to one hub"
    (hub_id,) = hub_ids
    kek = bytes(range(100, 132))
    storage = Storage(tmp_path / "hub.db")
    try:
        service = ingest.IngestService(hub_id, kek, storage)
        enrolled: dict[bytes, bytes] = {}
        for v in VECTORS:
            assert enrolled.setdefault(v.sensor_id, v.key) == v.key, "one key per sensor id"
        for sensor_id, key in enrolled.items():
            record = SensorRecord(
                sensor_id=sensor_id.hex(), dataset="air_quality", metrics=list(AIR_METRICS), latitude=58.97,
                longitude=5.73, wrapped_key=sensors.wrap_key(kek, hub_id, sensor_id, key), enrolled_at_ms=0,
            )
            await storage.write(lambda s, r=record: s.add_sensor(r))

        for v in VECTORS:  # in document order
            if v.f["expect"] == "accept":
                (receipt,) = await service.submit_batch([v.frame])
                assert (receipt.sensor_id, receipt.counter) == (v.sensor_id.hex(), v.counter)
                assert receipt.stored == len(v.readings()) and receipt.duplicate == 0
            else:
                with pytest.raises(Rejected) as rejected:
                    await service.submit_batch([v.frame])
                assert rejected.value.reason.label == v.f["reason"]

        # As the document says: vector 1 or 3 again, after vector 3, is a replay.
        for name in ("1-minimal", "3-base-fields"):
            with pytest.raises(Rejected) as rejected:
                await service.submit_batch([BY_NAME[name].frame])
            assert rejected.value.reason is Reason.REPLAYED, name
    finally:
        storage.close()


# -- the rejection table -------------------------------------------------------------------

def rejection_rows(table: str) -> dict[str, list[str]]:
    rows = table_after(doc_text(), f"rejection-table: {table}")
    out = {}
    for cells in rows:
        label = code(cells[0])
        assert label not in out, f"{label} listed twice"
        out[label] = cells
    return out


def reasons_used_for_ingest() -> set[Reason]:
    used = set()
    for module in INGEST_MODULES:
        source = (REPO_ROOT / module).read_text(encoding="utf-8")
        used |= {Reason[name] for name in re.findall(r"\bReason\.([A-Z][A-Z_]*)\b", source)}
    return used


def test_every_ingest_reason_is_in_the_ingest_table():
    used = reasons_used_for_ingest()
    assert Reason.AUTHENTICATION_FAILED in used and Reason.REPLAYED in used  # the scan works
    table = rejection_rows("ingest")
    missing = sorted(r.label for r in used if r.label not in table)
    assert not missing, f"docs/protocol.md's ingest rejection table lacks {missing}"


def test_rejection_tables_match_node_errors():
    ingest_rows, general_rows = rejection_rows("ingest"), rejection_rows("general")
    assert not set(ingest_rows) & set(general_rows)
    rows = {**ingest_rows, **general_rows}
    assert set(rows) == {r.label for r in Reason}, "every Reason appears exactly once in the doc"
    for reason in Reason:
        _label, grpc_code, http_status, meaning, *_ = rows[reason.label]
        assert code(grpc_code) == reason.grpc_code, reason
        assert int(http_status) == reason.http_status, reason
        assert meaning == reason.meaning, reason


def test_grpc_codes_in_the_table_are_real_grpc_codes():
    import grpc

    for reason in Reason:
        assert grpc.StatusCode[reason.grpc_code]  # what the servicers map to
    assert "smartregion-reason" in Path(servicer_common.__file__).read_text(encoding="utf-8")


# -- the other tables and constants --------------------------------------------------------

def test_metric_table_matches_the_catalog():
    documented = set()
    for dataset, classification, metric, unit, minimum, maximum, description in table_after(doc_text(), "metric-table"):
        documented.add((code(dataset), classification, code(metric), code(unit), float(minimum), float(maximum), description))
    expected = {
        (d.name, d.classification.value, m.name, m.unit, float(m.minimum), float(m.maximum), m.description)
        for d in catalog.DATASETS.values()
        for m in d.metrics.values()
    }
    assert documented == expected


def test_credential_field_table_matches_the_credential_file():
    record = SensorRecord("b0" * 16, "air_quality", ["pm25"], 58.97, 5.73, b"", 0)
    produced = sensors.credential_json(
        record, bytes(32), hub_id="a0" * 16, municipality="1103", grpc_address="h:1", http_url="https://h:2",
        tls=True, tls_cert_pem="PEM",
    )
    import json

    documented = [code(cells[0]) for cells in table_after(doc_text(), "credential-fields")]
    assert documented == list(json.loads(produced))


def test_constants_match_the_code():
    (block,) = fenced_blocks(doc_text(), "constants")
    c = parse_fields(block)
    from node.app import server

    expected = {
        "frame_version": str(frames.VERSION),
        "header_size": str(frames.HEADER_SIZE),
        "nonce_size": str(len(frames.nonce_for(1))),
        "tag_size": str(frames.TAG_SIZE),
        "key_size": str(frames.KEY_SIZE),
        "aad_domain": frames.AAD_DOMAIN.hex(),
        "max_counter": str(frames.MAX_COUNTER),
        "max_plaintext": str(frames.MAX_PLAINTEXT),
        "max_frame": str(frames.MAX_FRAME),
        "max_frames_per_batch": str(ingest.MAX_FRAMES_PER_BATCH),
        "max_senml_records": str(senml.MAX_RECORDS),
        "relative_time_limit": str(senml.RELATIVE_TIME_LIMIT),
        "latest_time": str(int(senml.LATEST_TIME)),
        "stream_commit_frames": str(ingest.STREAM_COMMIT_FRAMES),
        "stream_commit_readings": str(ingest.STREAM_COMMIT_READINGS),
        "grpc_max_message": str(server.MAX_MESSAGE_BYTES),
        "http_path": "/v1/frames",
        "http_content_type": http_app.FRAME_CONTENT_TYPE,
        "grpc_reason_trailer": "smartregion-reason",
    }
    assert c == expected
    assert frames.AAD_DOMAIN == b"smartregion/v1/frame\x00"
    assert float(senml.LATEST_TIME) == float(c["latest_time"])
    assert "/v1/frames" in Path(http_app.__file__).read_text(encoding="utf-8")


def test_the_proto_copy_is_the_contract():
    text = doc_text()
    after_marker = text[text.index("<!-- ingest-proto"):]
    (copy, *_) = fenced_blocks(after_marker, "proto")
    assert copy == INGEST_PROTO.read_text(encoding="utf-8")
