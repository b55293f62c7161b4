from __future__ import annotations

import grpc

from federation.descriptors import cert_sha256
from node import admin, keychain
from node.api.v1 import admin_pb2, admin_pb2_grpc
from node.app.certificates import ServedCertificate
from node.app.servicers.admin_federation import AuditAdmin, FederationAdmin, QueryAdmin
from node.app.servicers.admin_lifecycle import LifecycleAdmin
from node.app.servicers.common import translate_rejections
from node.errors import Reason, Rejected
from node.hub import Hub
from node.sensors import DEFAULT_OLD_KEY_GRACE_S, Enrolment
from node.storage.base import LorawanDeviceRecord, SensorRecord


def sensor_message(s: SensorRecord, device: LorawanDeviceRecord | None = None) -> admin_pb2.Sensor:
    return admin_pb2.Sensor(
        sensor_id=s.sensor_id,
        dataset=s.dataset,
        metrics=s.metrics,
        latitude=s.latitude,
        longitude=s.longitude,
        subject_id=s.subject_id,
        label=s.label,
        enrolled_at_ms=s.enrolled_at_ms,
        revoked_at_ms=s.revoked_at_ms or 0,
        last_counter=s.last_counter,
        last_seen_ms=s.last_seen_ms or 0,
        frames_accepted=s.frames_accepted,
        frames_rejected=s.frames_rejected,
        readings=s.readings,
        confidentiality=device.confidentiality if device else "end-to-end",
        lorawan_dev_eui=device.dev_eui if device else "",
        rekeyed_at_ms=s.rekeyed_at_ms or 0,
        old_key_until_ms=s.previous_key_until_ms or 0,
    )


class AdminServicer(FederationAdmin, QueryAdmin, AuditAdmin, LifecycleAdmin, admin_pb2_grpc.AdminServicer):
    def __init__(self, hub: Hub, federation, queries, certificates: ServedCertificate | None = None) -> None:
        self.hub = hub
        self.federation = federation
        self.queries = queries
        self.certificates = certificates

    @translate_rejections
    async def RenewCertificate(self, request, context: grpc.aio.ServicerContext) -> admin_pb2.CertificateStatus:
        return await self._certificates().renew("asked by the admin")

    @translate_rejections
    async def GetCertificateStatus(self, request, context: grpc.aio.ServicerContext) -> admin_pb2.CertificateStatus:
        return self._certificates().status()

    @translate_rejections
    async def RotateIdentityKey(self, request, context: grpc.aio.ServicerContext) -> admin_pb2.KeyRotation:
        if self.certificates is None:
            raise Rejected(Reason.INTERNAL, "this hub was started without its served identity: stop it and run "
                                            "`smartregion key rotate`")
        old, new = await self.certificates.rotate_key(request.new_tls_issuer)
        return admin_pb2.KeyRotation(
            hub_id=new.hub_id_text, rotation=len(new.key_history), old_public_key=old.public_key_raw,
            new_public_key=new.public_key_raw, key_history=new.key_history,
            certificate_sha256=cert_sha256(new.tls_cert_pem).hex(),
            rotated_at_ms=keychain.RotationStatement.from_bytes(new.key_history[-1]).rotated_at_ms,
            issuer_created=old.tls_issuer is None and new.tls_issuer is not None,
            issuer_replaced=request.new_tls_issuer)

    def _certificates(self) -> ServedCertificate:
        if self.certificates is None:
            raise Rejected(Reason.INVALID_REQUEST, "this hub serves without TLS (--insecure): it has no certificate to renew")
        return self.certificates

    @translate_rejections
    async def GetStatus(self, request, context: grpc.aio.ServicerContext):
        st = await admin.status(self.hub)
        hub = self.hub
        return admin_pb2.HubStatus(
            hub_id=hub.config.hub_id,
            municipality_number=hub.config.municipality,
            municipality_name=hub.config.municipality_name,
            identity_public_key=hub.identity.public_key_raw.hex(),
            tls_certificate_pem=hub.identity.tls_cert_pem.decode(),
            endpoint=admin_pb2.Endpoint(
                grpc_address=hub.endpoint.grpc_address, http_url=hub.endpoint.http_url, tls=hub.endpoint.tls
            ),
            sensors_active=st.sensors_active,
            sensors_revoked=st.sensors_revoked,
            counts=[
                admin_pb2.MetricCount(
                    dataset=c.dataset, metric=c.metric, readings=c.readings, first_time_ms=c.first_time_ms, last_time_ms=c.last_time_ms
                )
                for c in st.counts
            ],
            rejections_by_reason=st.rejections,
            version=hub.version,
            started_at_ms=hub.started_at_ms,
            sensors_network_decrypted=st.sensors_network_decrypted,
        )

    @translate_rejections
    async def AddSensor(self, request, context):
        enrolment = Enrolment(
            dataset=request.dataset,
            metrics=list(request.metrics),
            latitude=request.latitude,
            longitude=request.longitude,
            subject_id=request.subject_id,
            label=request.label,
        )
        lorawan = None
        if request.lorawan_dev_eui:
            lorawan = admin.LorawanEnrolment(request.lorawan_dev_eui, request.lorawan_app_s_key, request.confidentiality or "end-to-end",
                                             request.codec or "json")
        elif request.lorawan_app_s_key or request.codec or request.confidentiality not in ("", "end-to-end"):
            raise Rejected(Reason.INVALID_REQUEST, "an AppSKey, codec or network-decrypted confidentiality needs a LoRaWAN DevEUI")
        record, credential = await admin.add_sensor(self.hub, enrolment, lorawan, request.request_id)
        devices = await admin.lorawan_devices(self.hub)
        return admin_pb2.AddSensorResponse(sensor=sensor_message(record, devices.get(record.sensor_id)), credential_json=credential)

    @translate_rejections
    async def AddLorawanKek(self, request, context):
        await admin.add_lorawan_kek(self.hub, request.label, request.kek)
        return admin_pb2.LorawanKek(label=request.label)

    @translate_rejections
    async def ListSensors(self, request, context):
        sensors = await admin.list_sensors(self.hub, request.include_revoked)
        devices = await admin.lorawan_devices(self.hub)
        return admin_pb2.ListSensorsResponse(sensors=[sensor_message(s, devices.get(s.sensor_id)) for s in sensors])

    @translate_rejections
    async def RevokeSensor(self, request, context):
        return sensor_message(await admin.revoke_sensor(self.hub, request.sensor_id))

    @translate_rejections
    async def RekeySensor(self, request, context):
        grace = request.old_key_grace_seconds if request.HasField("old_key_grace_seconds") else DEFAULT_OLD_KEY_GRACE_S
        record, credential = await admin.rekey_sensor(self.hub, request.sensor_id, request.request_id, grace)
        return admin_pb2.AddSensorResponse(sensor=sensor_message(record), credential_json=credential)

    @translate_rejections
    async def ReissueCredential(self, request, context):
        record, credential = await admin.reissue_credential(self.hub, request.sensor_id)
        return admin_pb2.AddSensorResponse(sensor=sensor_message(record), credential_json=credential)
