"""Consent of data subjects, per purpose: recorded by the hub's admin, honoured at query time."""

from __future__ import annotations

from node import audit
from node.clock import Clock
from node.errors import Reason, Rejected
from node.purposes import PURPOSES
from node.storage import Storage
from node.storage.base import ConsentRow


def _check(subject_id: str, purpose_code: str) -> tuple[str, str]:
    subject_id, purpose_code = subject_id.strip(), purpose_code.strip()
    if not subject_id or len(subject_id) > 200:
        raise Rejected(Reason.INVALID_REQUEST, "a data subject id is 1 to 200 characters")
    if purpose_code not in PURPOSES:
        raise Rejected(Reason.INVALID_REQUEST, f"purpose {purpose_code!r} is not one of: {', '.join(PURPOSES)}")
    return subject_id, purpose_code


async def _latest(storage: Storage, subject_id: str, purpose_code: str) -> ConsentRow:
    rows = await storage.read(lambda s: s.list_consents(subject_id))
    return [r for r in rows if r.purpose_code == purpose_code][-1]


async def grant(storage: Storage, clock: Clock, subject_id: str, purpose_code: str) -> ConsentRow:
    subject_id, purpose_code = _check(subject_id, purpose_code)
    now = clock.now_ms()
    if not await storage.write(lambda s: s.grant_consent(subject_id, purpose_code, now)):
        raise Rejected(Reason.ALREADY_EXISTS, f"{subject_id} has already consented to {purpose_code}")
    await audit.admin_action(storage, now, "consent.grant", subject_id, purpose_code)
    return await _latest(storage, subject_id, purpose_code)


async def withdraw(storage: Storage, clock: Clock, subject_id: str, purpose_code: str) -> ConsentRow:
    subject_id, purpose_code = _check(subject_id, purpose_code)
    now = clock.now_ms()
    if not await storage.write(lambda s: s.withdraw_consent(subject_id, purpose_code, now)):
        raise Rejected(Reason.NOT_FOUND, f"{subject_id} has no active consent to {purpose_code}")
    await audit.admin_action(storage, now, "consent.withdraw", subject_id, purpose_code)
    return await _latest(storage, subject_id, purpose_code)


async def list_consents(storage: Storage, subject_id: str = "") -> list[ConsentRow]:
    """Every consent recorded, or one data subject's (`subject_id`), withdrawn ones included."""
    return await storage.read(lambda s: s.list_consents(subject_id.strip() or None))
