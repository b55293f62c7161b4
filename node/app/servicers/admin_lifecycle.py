"""Admin RPCs for running a hub for years: token rotation, erasure, retention (mixed into
AdminServicer)."""

from __future__ import annotations

import grpc

from federation.retention_promises import promised_history
from federation.service import Federation
from node import audit, credentials, erasure, retention
from node.api.v1 import admin_pb2
from node.app.servicers.common import translate_rejections
from node.hub import Hub
from node.hubdir import ADMIN_TOKEN_FILE


def retention_report(plans: list[retention.DatasetRetention], at_ms: int) -> admin_pb2.RetentionReport:
    return admin_pb2.RetentionReport(
        datasets=[admin_pb2.DatasetRetention(dataset=p.dataset, retention_days=p.retention_days, promised_days=p.promised_days,
                                             readings_deleted=p.deleted, cutoff_ms=p.cutoff_ms) for p in plans],
        ran_at_ms=at_ms,
    )


class LifecycleAdmin:
    hub: Hub
    federation: Federation

    @translate_rejections
    async def RotateAdminToken(self, request: admin_pb2.RotateAdminTokenRequest,
                               context: grpc.aio.ServicerContext) -> admin_pb2.RotateAdminTokenResponse:
        now_ms = self.hub.clock.now_ms()
        config = credentials.rotate_admin_token(self.hub.hub_dir, self.hub.config)
        await audit.admin_action(self.hub.storage, now_ms, "admin.token-rotate", self.hub.config.hub_id,
                                 f"now accepting sha256 {config.admin_token_sha256[:12]}…")
        return admin_pb2.RotateAdminTokenResponse(token_file=str(self.hub.hub_dir.file(ADMIN_TOKEN_FILE)),
                                                  token_sha256=config.admin_token_sha256, rotated_at_ms=now_ms)

    @translate_rejections
    async def EraseSubject(self, request: admin_pb2.EraseSubjectRequest, context: grpc.aio.ServicerContext) -> admin_pb2.ErasureReport:
        erased, at_ms = await erasure.erase_subject(self.hub, request.subject_id)
        return admin_pb2.ErasureReport(subject_id=erased.subject_id, readings_deleted=erased.readings_deleted,
                                       consents_deleted=erased.consents_deleted, sensors_revoked=erased.sensors_revoked,
                                       erased_at_ms=at_ms)

    @translate_rejections
    async def RunRetention(self, request: admin_pb2.RunRetentionRequest, context: grpc.aio.ServicerContext) -> admin_pb2.RetentionReport:
        promises = await promised_history(self.federation)
        if request.dry_run:
            plans = retention.plan(self.hub, promises, self.hub.clock.now_ms())
        else:
            plans = await retention.run(self.hub, promises)
        return retention_report(plans, self.hub.clock.now_ms())

    @translate_rejections
    async def SetRetention(self, request: admin_pb2.SetRetentionRequest, context: grpc.aio.ServicerContext) -> admin_pb2.RetentionReport:
        plans = await retention.set_days(self.hub, request.dataset.strip(), request.retention_days,
                                         await promised_history(self.federation))
        return retention_report(plans, self.hub.clock.now_ms())
