"""A connection that the server ends is closed, even when the server is stopping (its
task cancelled) as it ends it: otherwise the socket waits for the collector and the
peer for a timeout."""

from __future__ import annotations

import pytest
import trio
from wsclient import open_pair

from protocol import CloseCode


async def test_a_failing_connection_is_closed_though_cancelled_meanwhile() -> None:
    ws, client = await open_pair()
    with trio.CancelScope() as scope:
        scope.cancel()  # the server stops just as this connection fails
        await ws.fail(CloseCode.INTERNAL_ERROR, "internal-error", "a bug")
    assert scope.cancelled_caught
    with trio.fail_after(5):
        while await client.stream.receive_some(65536):
            pass  # the close frame, if it went out, then the end of the stream
    with pytest.raises(trio.ClosedResourceError):
        await ws.stream.send_all(b"x")
