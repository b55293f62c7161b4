"""What the hub's agreements promise about history, for node/retention.py.

An agreement under which this hub provides a dataset lets the consumer ask for a window of
`longest_window_days` ending now, so it promises that much history of each of its datasets.
It does so from when this hub signs it (proposed, pending or active) until it ends (expired,
revoked or superseded)."""

from __future__ import annotations

from federation.service import Federation
from node.api.v1 import agreement_pb2

PROMISING_STATES = (
    agreement_pb2.AGREEMENT_STATE_PROPOSED,
    agreement_pb2.AGREEMENT_STATE_PENDING,
    agreement_pb2.AGREEMENT_STATE_ACTIVE,
)


async def promised_history(federation: Federation) -> dict[str, int]:
    """dataset -> the longest history (days) any living agreement this hub provides under promises."""
    promised: dict[str, int] = {}
    for info in await federation.book.list():
        if info.role != "provider" or info.state not in PROMISING_STATES:
            continue
        terms = info.evidence.terms
        for dataset in terms.datasets:
            promised[dataset] = max(promised.get(dataset, 0), terms.longest_window_days)
    return promised
