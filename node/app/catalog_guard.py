"""A dataset's classification decides what may leave the hub under an agreement. Changing it in
catalog.toml while an agreement on the dataset is in force (proposed, pending or active, this
hub providing) would change what that agreement lets out without either party signing it, so
the hub refuses to start until those agreements end (expire or are revoked), or the change is
undone. Classifications are recorded each time the hub starts."""

from __future__ import annotations

from federation.ledger import Ledger
from node.api.v1.agreement_pb2 import AgreementState
from node.hub import Hub
from node.hubdir import HubDirError

IN_FORCE = (AgreementState.AGREEMENT_STATE_PROPOSED, AgreementState.AGREEMENT_STATE_PENDING, AgreementState.AGREEMENT_STATE_ACTIVE)


async def check_and_record(hub: Hub, ledger: Ledger) -> None:
    recorded = await hub.storage.read(lambda s: s.catalog_classifications())
    current = {name: d.classification.value for name, d in hub.catalog.datasets.items()}
    changed = {name for name, value in current.items() if name in recorded and recorded[name] != value}
    if changed:
        evidences = await ledger.all()
        states = await ledger.states(evidences, hub.clock.now_ms())
        binding = sorted(
            (e.agreement_id, sorted(changed & set(e.terms.datasets))) for e in evidences
            if states[e.agreement_id] in IN_FORCE and e.terms.provider.id == hub.config.hub_id and changed & set(e.terms.datasets)
        )
        if binding:
            details = "; ".join(f"{agreement_id} ({', '.join(names)})" for agreement_id, names in binding)
            moves = ", ".join(f"{n}: {recorded[n]} -> {current[n]}" for n in sorted(changed))
            raise HubDirError(
                f"catalog.toml changes the classification of datasets under agreements in force ({moves}); "
                f"revoke or let these agreements end first, or undo the change: {details}"
            )
    await hub.storage.write(lambda s: s.record_catalog_classifications(current))
