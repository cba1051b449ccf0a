"""A TCP relay running on its own asyncio loop in a background thread.

The coordinator's TLS gateway and the site's forwarder are both relays: they
accept a connection, wrap it in TLS, open a second connection, and copy bytes.
This module holds what they share (the loop thread, the byte pump), so that
neither package duplicates it and the site side need not import
``coordinator``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future

from lifecycle.errors import StateError

logger = logging.getLogger("lifecycle")
CHUNK = 1 << 16
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy ``reader`` to ``writer`` until EOF, then close ``writer``."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError, asyncio.IncompleteReadError):
        pass
    finally:
        await close(writer)


async def close(writer: asyncio.StreamWriter) -> None:
    """Close ``writer`` and ignore whatever the peer already did to it."""
    with contextlib.suppress(Exception):
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), 2.0)


class RelayServer:
    """Serve ``handler`` on ``host:port`` from a private event loop in a daemon thread.

    ``start()`` returns once the socket is bound (port 0 picks a free port,
    read back from :attr:`port`); ``stop()`` closes the listener and every open
    connection.
    """

    def __init__(self, name: str, host: str, port: int, handler: Handler) -> None:
        self.name, self.host, self.port = name, host, port
        self._handler = handler
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        try:
            await self._handler(reader, writer)
        except Exception:  # one bad connection must not take the relay down
            logger.exception("%s: connection handler failed", self.name)
        finally:
            self._tasks.discard(task)  # type: ignore[arg-type]
            await close(writer)

    async def _bind(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=1 << 20)
        self.port = self._server.sockets[0].getsockname()[1]

    def start(self) -> RelayServer:
        self._thread.start()
        future: Future[None] = asyncio.run_coroutine_threadsafe(self._bind(), self._loop)
        try:
            future.result(timeout=10)
        except OSError as exc:
            self._loop.call_soon_threadsafe(self._loop.stop)
            raise StateError(f"{self.name} cannot listen on {self.host}:{self.port}: {exc.strerror or exc}; "
                             "pick another port or stop what holds it") from exc
        logger.info("%s listening on %s:%d", self.name, self.host, self.port)
        return self

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.sleep(0)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def __enter__(self) -> RelayServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
