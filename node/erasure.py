"""Erasure of a data subject (GDPR art. 17): their readings and consent history are deleted,
their sensors revoked (so nothing new arrives) with subject and label cleared. What stays is
the audit entry recording that the erasure happened, which names the subject id and counts,
and the sensors' ids and counters (they hold no personal data and keep replay protection)."""

from __future__ import annotations

from node import audit
from node.errors import Reason, Rejected
from node.hub import Hub
from node.storage.base import Erasure


async def erase_subject(hub: Hub, subject_id: str) -> tuple[Erasure, int]:
    """Erase now; effective for the next query. Returns what was removed and when."""
    subject_id = subject_id.strip()
    if not subject_id or len(subject_id) > 200:
        raise Rejected(Reason.INVALID_REQUEST, "a data subject id is 1 to 200 characters")
    now_ms = hub.clock.now_ms()
    erased = await hub.storage.write(lambda s: s.erase_subject(subject_id, now_ms))
    if erased is None:
        await audit.admin_action(hub.storage, now_ms, "consent.erase", subject_id, "", Reason.NOT_FOUND.label)
        raise Rejected(Reason.NOT_FOUND, f"this hub knows no data subject {subject_id!r} (no sensor and no consent); nothing erased")
    for sensor_id in erased.sensors_revoked:
        hub.ingest.forget(sensor_id)
    await audit.admin_action(
        hub.storage, now_ms, "consent.erase", subject_id,
        f"deleted {erased.readings_deleted} readings and {erased.consents_deleted} consent records; "
        f"revoked sensors {', '.join(erased.sensors_revoked) or 'none'}",
    )
    return erased, now_ms
