from __future__ import annotations

import asyncio

import grpc

from node.api.v1 import ingest_pb2, ingest_pb2_grpc
from node.app import grpc_limits
from node.app.servicers.common import translate_rejections
from node.errors import Reason, Rejected
from node.hub import Hub
from node.ingest import Receipt


def _receipt(r: Receipt) -> ingest_pb2.FrameReceipt:
    return ingest_pb2.FrameReceipt(
        sensor_id=r.sensor_id, counter=r.counter, readings_stored=r.stored, readings_duplicate=r.duplicate
    )


class IngestServicer(ingest_pb2_grpc.IngestServicer):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    @translate_rejections
    async def SubmitBatch(self, request, context: grpc.aio.ServicerContext):
        receipts = await self.hub.ingest.submit_batch([f.frame for f in request.frames])
        return ingest_pb2.SubmitBatchResponse(receipts=[_receipt(r) for r in receipts])

    @translate_rejections
    async def StreamFrames(self, request_iterator, context: grpc.aio.ServicerContext):
        session = self.hub.ingest.stream()
        frames_in = aiter(request_iterator)
        idle = grpc_limits.STREAM_IDLE_SECONDS
        while True:
            try:
                async with asyncio.timeout(idle):
                    sealed = await anext(frames_in)
            except StopAsyncIteration:
                break
            except TimeoutError:
                refused = await self.hub.ingest.reject(Reason.TIMED_OUT, f"no frame arrived for {idle:g} s")
                raise await session.end_with(refused) from None
            except Rejected as refused:  # an oversized or undecodable message (grpc_limits)
                raise await session.end_with(refused) from None
            await session.add(sealed.frame)
        await session.flush()
        return ingest_pb2.StreamFramesResponse(
            frames_accepted=session.frames_accepted,
            readings_stored=session.readings_stored,
            readings_duplicate=session.readings_duplicate,
            last_counter=session.last_counter,
        )
