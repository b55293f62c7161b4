"""One LoRaWAN uplink into the ingest pipeline: find the device, decrypt, decode, validate,
commit. Every network server's format (node/networks/events.py) is turned into an `Uplink`
first, so ChirpStack and The Things Stack share this path, its checks and its refusals.

The device's sensor counter is FCnt + 1: frame counters start at 1, LoRaWAN's at 0. For a device
whose AppSKeys come in key envelopes, every join starts a new session (and FCnt at 0 again):
the counter is session number * 2^32 + FCnt + 1, sessions numbered as the hub first sees them.
A replayed or reordered uplink (counter not above the last accepted, an uplink of an earlier
session included) is refused as `replayed` by the pipeline, and so is a second copy of an
uplink already stored: it is stored once.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from prometheus_client import Counter

from node.errors import Reason, Rejected
from node.ingest import IngestService, Receipt
from node.networks import codecs, lorawan
from node.networks.devices import Confidentiality, unwrap_app_s_key, unwrap_kek
from node.observability import HubMetrics
from node.storage import Storage
from node.storage.base import LorawanDeviceRecord

log = logging.getLogger("smartregion.networks")


@dataclass(frozen=True)
class KeyEnvelope:
    kek_label: str
    aes_key: bytes  # the AppSKey, RFC 3394-wrapped
    session_key_id: str = ""  # the join server's id of the session (a new one per join)


SESSION_SHIFT = 32  # counter = session number * 2^32 + FCnt + 1 (FCnt is a 32-bit counter)


@dataclass(frozen=True)
class Uplink:
    door: str  # "chirpstack" | "tts": for metrics and messages
    dev_eui: str  # 16 lowercase hex digits
    fcnt: int
    fport: int
    payload: bytes  # the FRMPayload as the network server forwarded it (encrypted or not)
    time_ms: int  # when the network received it
    dev_addr: bytes | None = None  # needed to decrypt
    key_envelope: KeyEnvelope | None = None
    decoded: dict[str, object] | None = None  # the network server's own decoding, if any


class NetworkMetrics:
    """Counters of the network doors, in the hub's registry (GET /metrics)."""

    def __init__(self, metrics: HubMetrics) -> None:
        self.uplinks = Counter(
            "smartregion_network_uplinks", "Uplinks and messages from network doors, by door and outcome",
            ["door", "outcome"], registry=metrics.registry,
        )
        self.fcnt_gaps = Counter(
            "smartregion_network_fcnt_gaps", "Uplinks missing between accepted ones (FCnt jumps; QoS 0 doors lose some)",
            ["door"], registry=metrics.registry,
        )
        self.reconnects = Counter(
            "smartregion_network_reconnects", "Broker connections lost and retried, by subscription", ["subscription"],
            registry=metrics.registry,
        )


class LorawanIngest:
    def __init__(self, ingest: IngestService, storage: Storage, hub_kek: bytes, hub_id: bytes,
                 codec_table: dict[str, codecs.Codec], metrics: NetworkMetrics) -> None:
        self._ingest = ingest
        self._storage = storage
        self._hub_kek = hub_kek
        self._hub_id = hub_id
        self._codecs = codec_table
        self.metrics = metrics

    async def _device(self, uplink: Uplink) -> LorawanDeviceRecord:
        device = await self._storage.read(lambda s: s.get_lorawan_device(uplink.dev_eui))
        if device is None:
            raise await self._ingest.reject(Reason.UNKNOWN_DEVICE, f"no sensor is enrolled for DevEUI {uplink.dev_eui}; dropped")
        return device

    async def _counter(self, device: LorawanDeviceRecord, uplink: Uplink) -> int:
        """FCnt + 1, above every counter of the device's earlier sessions (key envelopes name
        their session; a held AppSKey is one session for good)."""
        envelope = uplink.key_envelope
        if device.wrapped_app_s_key is not None or envelope is None or not envelope.session_key_id:
            return uplink.fcnt + 1
        dev_eui, session = device.dev_eui, envelope.session_key_id
        session_no = await self._storage.write(lambda s: s.lorawan_session_no(dev_eui, session))
        return (session_no << SESSION_SHIFT) + uplink.fcnt + 1

    async def _app_s_key(self, device: LorawanDeviceRecord, uplink: Uplink) -> bytes:
        if device.wrapped_app_s_key is not None:
            try:
                return unwrap_app_s_key(self._hub_kek, self._hub_id, device.dev_eui, device.wrapped_app_s_key)
            except ValueError as exc:
                log.error("AppSKey does not unwrap", extra={"dev_eui": device.dev_eui})
                raise await self._ingest.reject(Reason.INTERNAL, str(exc), device.sensor_id) from None
        envelope = uplink.key_envelope
        if envelope is None:
            raise await self._ingest.reject(
                Reason.UNKNOWN_KEK,
                f"device {device.dev_eui} is end-to-end without an AppSKey at the hub, and the uplink carries no key envelope",
                device.sensor_id,
            )
        label = envelope.kek_label
        wrapped_kek = await self._storage.read(lambda s: s.get_lorawan_kek(label))
        if wrapped_kek is None:
            raise await self._ingest.reject(
                Reason.UNKNOWN_KEK, f"the key envelope is under KEK {label!r}, which this hub does not hold", device.sensor_id
            )
        try:
            kek = unwrap_kek(self._hub_kek, self._hub_id, label, wrapped_kek)
            return lorawan.unwrap_app_s_key(kek, envelope.aes_key)
        except lorawan.LorawanError as exc:
            raise await self._ingest.reject(Reason.UNKNOWN_KEK, f"KEK {label!r}: {exc}", device.sensor_id) from None
        except ValueError as exc:
            raise await self._ingest.reject(Reason.INTERNAL, str(exc), device.sensor_id) from None

    async def _values(self, device: LorawanDeviceRecord, uplink: Uplink) -> dict[str, float]:
        codec = self._codecs.get(device.codec)
        if codec is None:
            message = f"device {device.dev_eui}'s codec {device.codec!r} is no longer in networks.toml"
            raise await self._ingest.reject(Reason.INTERNAL, message, device.sensor_id)
        try:
            if device.confidentiality == Confidentiality.END_TO_END:
                if uplink.dev_addr is None:
                    message = "the uplink has no DevAddr; it cannot be decrypted"
                    raise await self._ingest.reject(Reason.MALFORMED_UPLINK, message, device.sensor_id)
                app_s_key = await self._app_s_key(device, uplink)
                plaintext = lorawan.frm_payload_cipher(app_s_key, uplink.dev_addr, uplink.fcnt, uplink.payload)
                return codec.decode(plaintext)
            if uplink.payload:
                return codec.decode(uplink.payload)
            if uplink.decoded:
                return codecs.decode_json_object(uplink.decoded)
            raise codecs.CodecError("the uplink carries neither a payload nor a decoded object")
        except (codecs.CodecError, lorawan.LorawanError) as exc:
            raise await self._ingest.reject(Reason.UNDECODABLE_PAYLOAD, f"device {device.dev_eui}: {exc}", device.sensor_id) from None

    async def submit(self, uplink: Uplink) -> Receipt:
        """Store the uplink's readings durably, or raise Rejected (counted, nothing stored)."""
        try:
            if uplink.fport == 0 or not 0 < uplink.fport < 224:
                raise await self._ingest.reject(Reason.MALFORMED_UPLINK, f"FPort {uplink.fport} carries no application data")
            device = await self._device(uplink)
            values = await self._values(device, uplink)
            # Through SenML on purpose: the pipeline's one validation (metrics, units, ranges, time).
            plaintext = json.dumps(
                [{"n": metric, "v": value, "t": uplink.time_ms / 1000} for metric, value in values.items()], allow_nan=False
            ).encode()
            counter = await self._counter(device, uplink)  # after the envelope unwrapped: only real sessions count
            opened = await self._ingest.open_authenticated(device.sensor_id, counter, plaintext)
            last = self._ingest.last_counter(device.sensor_id)
            (receipt,) = await self._ingest.commit([opened])
        except Rejected as exc:
            self.metrics.uplinks.labels(uplink.door, exc.reason.label).inc()
            raise
        except ValueError as exc:  # a non-finite value from a codec (json.dumps allow_nan=False)
            self.metrics.uplinks.labels(uplink.door, Reason.UNDECODABLE_PAYLOAD.label).inc()
            raise await self._ingest.reject(Reason.UNDECODABLE_PAYLOAD, f"device {uplink.dev_eui}: {exc}") from None
        self.metrics.uplinks.labels(uplink.door, "stored").inc()
        if last and counter - 1 > last and (counter >> SESSION_SHIFT) == (last >> SESSION_SHIFT):
            self.metrics.fcnt_gaps.labels(uplink.door).inc(counter - 1 - last)  # counters last+1 .. counter-1 never came
        return receipt
