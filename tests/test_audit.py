"""The audit log exports with a signed head and verifies offline; any alteration is caught."""

from __future__ import annotations

import json

import grpc
import pytest

from node import audit
from node.api.v1 import admin_pb2


@pytest.fixture
async def exported(live_hub):
    # Some auditable activity: a refused peering and a partner registration attempt.
    for request in (admin_pb2.AddPeerRequest(address="127.0.0.1:1", hub_id="00" * 16),):
        with pytest.raises(grpc.aio.AioRpcError):
            await live_hub.admin.AddPeer(request, metadata=live_hub.admin_metadata)
    await audit.record(live_hub.hub.storage, live_hub.hub.clock, audit.AuditEntry("admin", "test.action", "x", "ok", "first"),
                       audit.AuditEntry("admin", "test.action", "y", "ok", "second"))
    response = await live_hub.admin.ExportAudit(admin_pb2.ExportAuditRequest(), metadata=live_hub.admin_metadata)
    return live_hub, response.jsonl


async def test_export_verifies(exported):
    live_hub, data = exported
    head = audit.verify_export(data)
    entries = [json.loads(line) for line in _lines(data)[1:-1]]
    assert head["hub_id"] == live_hub.hub.config.hub_id and head["seq"] == len(entries) >= 3
    details = [json.loads(e["entry"])["detail"] for e in entries]
    assert details.index("first") + 1 == details.index("second")  # recorded together, in order


def _lines(data: bytes) -> list[str]:
    return data.decode().splitlines()


def _join(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def _alter_entry(data: bytes) -> bytes:
    lines = _lines(data)
    at = next(i for i, text in enumerate(lines) if '\\"first\\"' in text)  # the entry recorded above
    line = json.loads(lines[at])
    line["entry"] = line["entry"].replace("first", "FIRST")
    lines[at] = json.dumps(line)
    return _join(lines)


TAMPERING = {
    "an entry's text changed": _alter_entry,
    "an entry removed from the middle": lambda d: _join(_lines(d)[:2] + _lines(d)[3:]),
    "the last entry removed": lambda d: _join(_lines(d)[:-2] + _lines(d)[-1:]),
    "entries swapped": lambda d: _join([_lines(d)[0], _lines(d)[2], _lines(d)[1], *_lines(d)[3:]]),
    "the head's signature changed": lambda d: d.replace(json.loads(_lines(d)[-1])["signature"][:8].encode(), b"00000000"),
    "another public key": lambda d: d.replace(json.loads(_lines(d)[0])["public_key"][:8].encode(), b"00000000"),
}


@pytest.mark.parametrize("tamper", TAMPERING.values(), ids=TAMPERING.keys())
async def test_any_alteration_fails(exported, tamper):
    _, data = exported
    altered = tamper(data)
    assert altered != data
    with pytest.raises(audit.AuditError):
        audit.verify_export(altered)
