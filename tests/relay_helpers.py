"""A TCP relay on loopback for tests of network conditions: it forwards connections to a
real server from a chosen source address (127.0.0.0/8 is all loopback on Linux, so a
flooder can come from 127.0.0.2 while honest callers come from 127.0.0.1), and it can be
switched "down", when it accepts each connection attempt, records its time and closes it,
as a peer that is not serving would."""

from __future__ import annotations

import asyncio
import contextlib
import time


class Relay:
    def __init__(self, target_port: int, source_host: str = "127.0.0.1") -> None:
        self.target_port = target_port
        self.source_host = source_host
        self.up = True
        self.refused_at: list[float] = []  # time.monotonic() of each connection attempt while down
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def address(self) -> str:
        assert self._server is not None
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def start(self) -> Relay:
        self._server = await asyncio.start_server(self._accepted, "127.0.0.1", 0)
        return self

    def drop_connections(self) -> None:
        """Close every relayed connection (the server behind went away)."""
        for writer in list(self._writers):
            writer.close()

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            self.refused_at.append(time.monotonic())
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port,
                                                                 local_addr=(self.source_host, 0))
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.drop_connections()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
