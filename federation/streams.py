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
import ssl
import threading
from asyncio import sslproto
from collections.abc import Awaitable, Callable
from concurrent.futures import Future

from federation import logger
from lifecycle.errors import StateError

CHUNK = 1 << 16
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
DescribeRefusal = Callable[[BaseException, "ssl.SSLObject | None"], str]
"""``(handshake error, the connection's SSLObject) → text`` for the relay's refusal log line."""


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


class _AlertingSSLProtocol(sslproto.SSLProtocol):
    """asyncio's TLS protocol, but a failed handshake still sends its alert.

    CPython 3.11-3.13 drop the alert OpenSSL wrote (``certificate revoked``,
    ``unknown ca``, ``certificate required``) and just close the socket, so a
    refused client sees a bare EOF. Sending the pending bytes first makes the
    refusal visible, and checkable, at the TLS layer (``openssl s_client``
    prints the alert).
    """

    def _on_handshake_complete(self, handshake_exc: BaseException | None) -> None:
        if handshake_exc is not None:
            with contextlib.suppress(Exception):
                self._process_outgoing()  # type: ignore[attr-defined]  # CPython >= 3.11 has it, typeshed omits it
        super()._on_handshake_complete(handshake_exc)


async def start_tls_server(loop: asyncio.AbstractEventLoop, transport: asyncio.Transport,
                           protocol: asyncio.BaseProtocol, context: ssl.SSLContext,
                           timeout: float,
                           failed: Callable[[ssl.SSLObject | None], None] | None = None) -> asyncio.Transport:
    """Server-side ``loop.start_tls`` (same steps as CPython's) with :class:`_AlertingSSLProtocol`.

    ``failed`` receives the connection's ``SSLObject`` when the handshake
    fails, before the error is raised (so a caller can say whose certificate
    was refused).
    """
    waiter = loop.create_future()
    # typeshed says int, but asyncio takes the timeout in seconds as a float (loop.start_tls passes one)
    ssl_protocol = _AlertingSSLProtocol(loop, protocol, context, waiter, server_side=True,
                                        ssl_handshake_timeout=timeout,  # type: ignore[arg-type]
                                        call_connection_made=False)
    transport.pause_reading()
    transport.set_protocol(ssl_protocol)
    made = loop.call_soon(ssl_protocol.connection_made, transport)
    resumed = loop.call_soon(transport.resume_reading)
    try:
        await waiter
    except BaseException:
        if failed is not None:
            failed(getattr(ssl_protocol, "_sslobj", None))
        transport.close()
        made.cancel()
        resumed.cancel()
        raise
    return ssl_protocol._app_transport


class _Held(asyncio.Protocol):
    """Holds a fresh connection unread until the relay wraps it in TLS.

    ``StreamWriter.start_tls`` after ``start_server`` races the client: a
    ClientHello that arrives before the upgrade lands in the plain stream's
    buffer and the handshake hangs. Pausing reading in ``connection_made``
    (before the transport registers its reader) leaves the bytes in the kernel
    until ``loop.start_tls`` takes over.
    """

    def __init__(self, relay: RelayServer) -> None:
        self.relay = relay

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()
        self.relay._spawn(transport)

    def data_received(self, data: bytes) -> None:  # never called: reading stays paused until replaced
        raise AssertionError("the relay read a connection before choosing its protocol")


class RelayServer:
    """Serve ``handler`` on ``host:port`` from a private event loop in a daemon thread.

    ``tls`` (called per connection, so a caller may swap contexts, e.g. after a
    CRL change) makes every accepted connection a server-side TLS one before
    ``handler`` sees it; a failed handshake closes the connection and is logged
    (in the words of ``describe_refusal`` when given).
    ``start()`` returns once the socket is bound (port 0 picks a free port,
    read back from :attr:`port`); ``stop()`` closes the listener and every open
    connection.
    """

    def __init__(self, name: str, host: str, port: int, handler: Handler,
                 tls: Callable[[], ssl.SSLContext] | None = None, handshake_timeout: float = 10.0,
                 describe_refusal: DescribeRefusal | None = None) -> None:
        self.name, self.host, self.port = name, host, port
        self._describe_refusal = describe_refusal
        self._handler = handler
        self._tls = tls
        self._handshake_timeout = handshake_timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def _spawn(self, transport: asyncio.Transport) -> None:
        task = self._loop.create_task(self._serve(transport))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, transport: asyncio.Transport) -> None:
        reader = asyncio.StreamReader(limit=1 << 20, loop=self._loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=self._loop)
        peer = transport.get_extra_info("peername")
        if self._tls is not None:
            refused: list[ssl.SSLObject | None] = []
            try:
                wrapped = await start_tls_server(self._loop, transport, protocol, self._tls(),
                                                 self._handshake_timeout, failed=refused.append)
            except (TimeoutError, ssl.SSLError, ConnectionError, OSError) as exc:
                transport.close()
                logger.warning("%s: TLS handshake from %s refused: %s", self.name, peer,
                               self._refusal(exc, refused[0] if refused else None))
                return
            if wrapped is None:
                transport.close()
                return
            transport = wrapped
        else:
            transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self._tls is None:
            transport.resume_reading()
        writer = asyncio.StreamWriter(transport, protocol, reader, self._loop)
        try:
            await self._handler(reader, writer)
        except asyncio.CancelledError:
            pass
        except Exception:  # noqa: BLE001 - one bad connection must not take the relay down
            logger.exception("%s: connection handler failed", self.name)
        finally:
            await close(writer)

    def _refusal(self, exc: BaseException, ssl_object: ssl.SSLObject | None) -> str:
        default = str(getattr(exc, "reason", None) or type(exc).__name__)
        if self._describe_refusal is None:
            return default
        try:
            return self._describe_refusal(exc, ssl_object)
        except Exception:  # noqa: BLE001 - a log line must not take the relay down
            logger.exception("%s: describing a refused handshake failed", self.name)
            return default

    async def _bind(self) -> None:
        self._server = await self._loop.create_server(lambda: _Held(self), self.host, self.port)
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
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:  # let each connection run its clean-up before the loop stops
            await asyncio.wait(tasks, timeout=3)

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
