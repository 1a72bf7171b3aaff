"""The client SDK, on trio: a device that never loses what it sent, a subscriber that
comes back.

``DeviceClient`` keeps every frame until the server acks it (bounded: ``send`` parks
when the buffer is full), reconnects with exponential backoff and jitter, resumes with
``hello.resume`` and resends what was not acked. ``open_subscriber`` yields the messages
of its topics and re-subscribes after every reconnect. See README, "Client SDK".
"""

from ._backoff import Backoff as Backoff
from ._connection import FatalError as FatalError
from ._connection import open_connection as open_connection
from .device import DeviceClient as DeviceClient
from .subscriber import open_subscriber as open_subscriber
from .subscriber import run_subscriber_client as run_subscriber_client

__all__ = ["Backoff", "DeviceClient", "FatalError", "open_connection", "open_subscriber",
           "run_subscriber_client"]
