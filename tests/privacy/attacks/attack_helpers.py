"""The attacked region: live in-process hubs (real grpc.aio servers, pinned TLS, SQLite), a
registered partner with one agreement at every hub, and stations delivering sealed readings.
Shared by the attack files of the independent review (one attack per file)."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import AsyncIterator
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from query_helpers import HOUR_MS, Node, add_sensor, deliver, ms, spec, start_nodes, stop_nodes, terms_toml

from federation import answers, envelope, partials, partners, sealing
from federation.partner_client import PartnerSession
from federation.query import asker
from federation.query_service import RUN_METHOD
from node import senml
from node.api.v1 import admin_pb2, query_pb2, query_service_pb2, query_service_pb2_grpc

DAY = ms(2019, 1, 1)
TOWNS = (("stavanger", "1103"), ("bergen", "4601"), ("porsgrunn", "4001"))


@dataclass
class Region:
    hubs: list[Node]
    partner: partners.PartnerKey
    agreements: dict[str, str]  # hub id -> the partner's agreement there

    async def ask(self, entry: Node, query: query_pb2.QuerySpec) -> query_service_pb2.QueryAnswer:
        """The partner asks through `entry` as the CLI does: fresh answer key, open, verify, merge."""
        async with PartnerSession(self.partner, entry.address, entry.id) as session:
            return await asker.ask(session.channel, self.partner.key, self.partner.partner_id, entry.id, query)

    async def ask_sealed(self, entry: Node, query: query_pb2.QuerySpec) -> tuple[query_service_pb2.QueryAnswer, X25519PrivateKey]:
        """The partner asks through `entry`; the answer as it arrives (sealed), and the answer key."""
        key = sealing.new_answer_key()
        asked = copy.deepcopy(query)
        asked.answer_key = sealing.public_raw(key)
        request = envelope.make(self.partner.key, self.partner.partner_id, entry.id, RUN_METHOD, query=asked)
        async with PartnerSession(self.partner, entry.address, entry.id) as session:
            return await query_service_pb2_grpc.QueryStub(session.channel).Run(request, timeout=30), key

    def open(self, answer: query_service_pb2.QueryAnswer, key: X25519PrivateKey) -> query_service_pb2.QueryAnswer:
        """What the partner's CLI does with an answer that arrived: open, verify, merge."""
        return asker.open_answer(answer, key, self.partner.public_key)


@contextlib.asynccontextmanager
async def region(base, terms: str, stations: dict[int, list[list[float]]], towns=TOWNS,
                 partner: partners.PartnerKey | None = None) -> AsyncIterator[Region]:
    """`stations[i]`: hub i's stations, each a list of hourly pm25 readings from DAY on."""
    hubs = await start_nodes(base, towns)
    try:
        partner = partner or partners.PartnerKey(Ed25519PrivateKey.generate(), "Angriper AS")
        agreements = {}
        for node in hubs:
            await node.admin("AddPartner", admin_pb2.AddPartnerRequest(name=partner.name, org_number="971564679",
                                                                      public_key_file=partners.public_document(partner)))
            proposal = await node.admin("ProposeAgreement", admin_pb2.ProposeAgreementRequest(to=partner.partner_id, terms_toml=terms))
            async with PartnerSession(partner, node.address, node.id) as session:
                await session.accept(proposal.terms.agreement_id)
            agreements[node.id] = proposal.terms.agreement_id
        for i, readings_of_stations in stations.items():
            node = hubs[i]
            for n, values in enumerate(readings_of_stations):
                sensor = await add_sensor(node, base, f"{node.municipality}-{n}", "air_quality", ["pm25"])
                await deliver(node, sensor, [senml.Reading("pm25", DAY + h * HOUR_MS, v) for h, v in enumerate(values)])
        yield Region(hubs, partner, agreements)
    finally:
        await stop_nodes(hubs)


def day_query(**fields) -> query_pb2.QuerySpec:
    return spec(**{"start_ms": DAY, "end_ms": DAY + 24 * HOUR_MS, **fields})


def resign(entry: Node, answer: query_service_pb2.QueryAnswer) -> query_service_pb2.QueryAnswer:
    """What a dishonest entry hub's operator (who holds the hub's key) can make of an answer:
    any edit, signed again by the entry hub."""
    forged = copy.deepcopy(answer)
    partials.sign_answer(entry.live.hub.identity, forged, partials.query_digest(forged.query.payload), entry.live.hub.clock.now_ms())
    return forged


def partial_of(p: query_pb2.Provenance) -> query_pb2.PartialResult:
    return query_pb2.PartialResult.FromString(p.partial.partial)


__all__ = ["DAY", "HOUR_MS", "Region", "answers", "day_query", "partial_of", "region", "resign", "terms_toml"]
