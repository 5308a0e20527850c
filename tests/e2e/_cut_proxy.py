"""A loopback TCP proxy that loses one answer: the request reaches the server, its reply never comes back."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from tests.e2e._servers import free_port


class CutProxy:
    """Forwards 127.0.0.1:`port` to `target_port`; once armed, cuts a connection after the server acted.

    Armed with `applied`, the next bytes the server sends are held (not
    forwarded) until `applied()` is true, e.g. the write is visible through
    another channel; then both sides of that connection are reset. The client
    sees UNAVAILABLE for a request the server did carry out.
    """

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self._target = target_port
        self._lock = threading.Lock()
        self._applied: Callable[[], bool] | None = None
        self.cut = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def arm(self, applied: Callable[[], bool]) -> None:
        with self._lock:
            self._applied = applied
            self.cut.clear()

    def _take(self) -> Callable[[], bool] | None:
        with self._lock:
            applied, self._applied = self._applied, None
            return applied

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", self.port))
        self._ready.set()
        self._loop.run_forever()
        server.close()
        for task in asyncio.all_tasks(self._loop):
            task.cancel()
        self._loop.run_until_complete(asyncio.sleep(0))
        self._loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target)

        async def upstream() -> None:
            while chunk := await reader.read(65536):
                up_writer.write(chunk)
                await up_writer.drain()
            up_writer.close()

        async def downstream() -> None:
            while chunk := await up_reader.read(65536):
                applied = self._take()
                if applied is not None:
                    for _ in range(600):  # up to 30 s for the write to show
                        if await asyncio.to_thread(applied):
                            break
                        await asyncio.sleep(0.05)
                    writer.transport.abort()
                    up_writer.transport.abort()
                    self.cut.set()
                    return
                writer.write(chunk)
                await writer.drain()
            writer.close()

        await asyncio.gather(upstream(), downstream(), return_exceptions=True)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
