"""A WebSocket client over in-memory trio streams, for driving server actors in tests.

:func:`open_pair` completes a real wsproto handshake against
:func:`vital_actors.edge.websocket.accept` without a network. Client-to-server bytes go
through a lockstep stream (``send_all`` returns only once the server has read them, as
TCP pushes back when a server stops reading); server-to-client bytes are buffered, so
the server never waits on the test.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio
import trio.testing
from trio import StapledStream
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Request,
    TextMessage,
)

from protocol import INGEST_PATH, SUBPROTOCOL, Message, ServerMessage, decode_server, encode
from vital_actors.edge.websocket import WebSocket, accept

__all__ = ["Client", "Closed", "open_pair"]


@dataclass(frozen=True, slots=True)
class Closed:
    """The server closed the connection with ``code`` (1006: without a close frame)."""

    code: int
    reason: str = ""


class Client:
    """The device (or subscriber) end of a test connection."""

    def __init__(self, stream: trio.abc.Stream, conn: WSConnection) -> None:
        self.stream = stream
        self.conn = conn
        self._parts: list[bytes] = []

    async def send(self, message: Message) -> None:
        await self.send_bytes(encode(message))

    async def send_bytes(self, payload: bytes) -> None:
        await self.stream.send_all(self.conn.send(BytesMessage(data=payload)))

    async def send_text(self, text: str) -> None:
        await self.stream.send_all(self.conn.send(TextMessage(data=text)))

    async def receive(self) -> ServerMessage | Closed:
        """The next server message, or :class:`Closed` (answering the close frame)."""
        while True:
            for event in self.conn.events():
                result = await self._handle(event)
                if result is not None:
                    return result
            data = await self.stream.receive_some(65536)
            if not data:
                return Closed(1006, "transport closed")
            self.conn.receive_data(bytes(data))

    async def _handle(self, event: object) -> ServerMessage | Closed | None:
        match event:
            case BytesMessage():
                self._parts.append(bytes(event.data))
                if event.message_finished:
                    payload, self._parts = b"".join(self._parts), []
                    return decode_server(payload)
            case Ping():
                await self.stream.send_all(self.conn.send(event.response()))
            case CloseConnection():
                if self.conn.state is ConnectionState.REMOTE_CLOSING:  # the server began
                    await self.stream.send_all(self.conn.send(event.response()))
                return Closed(event.code, event.reason or "")
            case _:
                raise AssertionError(f"unexpected event from the server: {event!r}")
        return None

    async def close(self, code: int = 1000) -> Closed:
        """Start a clean close and wait for the server's reply."""
        await self.stream.send_all(self.conn.send(CloseConnection(code)))
        while True:
            reply = await self.receive()
            if isinstance(reply, Closed):
                return reply


async def open_pair(*, path: str = INGEST_PATH,
                    max_message_bytes: int = 1 << 20) -> tuple[WebSocket, Client]:
    """A server :class:`WebSocket` past its handshake, and the client talking to it."""
    up_tx, up_rx = trio.testing.lockstep_stream_one_way_pair()
    down_tx, down_rx = trio.testing.memory_stream_one_way_pair()
    conn = WSConnection(ConnectionType.CLIENT)
    head = conn.send(Request(host="test", target=path, subprotocols=[SUBPROTOCOL]))
    ws = await accept(StapledStream(down_tx, up_rx), head, subprotocols=(SUBPROTOCOL,),
                      remote="test:1", max_message_bytes=max_message_bytes)
    assert ws is not None
    client = Client(StapledStream(up_tx, down_rx), conn)
    conn.receive_data(bytes(await down_rx.receive_some(65536)))
    events = list(conn.events())
    assert isinstance(events[0], AcceptConnection), events
    assert events[0].subprotocol == SUBPROTOCOL
    return ws, client
