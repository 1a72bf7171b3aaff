"""Protocol v1 of vital-actors: the wire format, sans-IO (no I/O, no trio).

See docs/protocol.md for the normative specification.
"""

from ._codec import MAX_CHANNELS as MAX_CHANNELS
from ._codec import STREAM_ID as STREAM_ID
from ._codec import TOPIC as TOPIC
from ._codec import MessageAssembler as MessageAssembler
from ._codec import decode_device as decode_device
from ._codec import decode_server as decode_server
from ._codec import decode_subscriber as decode_subscriber
from ._codec import encode as encode
from ._compact import COMPACT_SUBPROTOCOL as COMPACT_SUBPROTOCOL
from ._compact import CompactEncoder as CompactEncoder
from ._compact_decode import CompactDecoder as CompactDecoder
from ._deflate import PERMESSAGE_DEFLATE as PERMESSAGE_DEFLATE
from ._deflate import DeflateParams as DeflateParams
from ._deflate import Deflater as Deflater
from ._deflate import Inflater as Inflater
from ._deflate import negotiate_deflate as negotiate_deflate
from ._errors import CloseCode as CloseCode
from ._errors import LocalProtocolError as LocalProtocolError
from ._errors import ProtocolError as ProtocolError
from ._errors import RemoteProtocolError as RemoteProtocolError
from ._frames import OPCODE_BINARY as OPCODE_BINARY
from ._frames import server_frame as server_frame
from ._messages import DTYPES as DTYPES
from ._messages import Ack as Ack
from ._messages import DeviceMessage as DeviceMessage
from ._messages import Dtype as Dtype
from ._messages import Error as Error
from ._messages import Event as Event
from ._messages import Hello as Hello
from ._messages import Message as Message
from ._messages import Ping as Ping
from ._messages import Pong as Pong
from ._messages import Position as Position
from ._messages import Priority as Priority
from ._messages import Samples as Samples
from ._messages import ServerMessage as ServerMessage
from ._messages import StreamSamples as StreamSamples
from ._messages import Subscribe as Subscribe
from ._messages import SubscriberMessage as SubscriberMessage
from ._messages import Unsubscribe as Unsubscribe
from ._messages import Welcome as Welcome
from ._messages import position as position
from ._session import DeviceSession as DeviceSession
from ._session import Duplicate as Duplicate
from ._session import Frame as Frame
from ._session import Gap as Gap
from ._session import PingReceived as PingReceived
from ._session import SessionEvent as SessionEvent
from ._session import Started as Started
from ._zstd import ECG_DICTIONARY_ID as ECG_DICTIONARY_ID
from ._zstd import ZSTD_SUBPROTOCOL as ZSTD_SUBPROTOCOL
from ._zstd import ZstdCodec as ZstdCodec
from ._zstd import ZstdDictionary as ZstdDictionary
from ._zstd import delta8_decode as delta8_decode
from ._zstd import delta8_encode as delta8_encode
from ._zstd import delta_decode as delta_decode
from ._zstd import delta_encode as delta_encode
from ._zstd import ecg_dictionary as ecg_dictionary
from ._zstd import undelta as undelta

#: WebSocket subprotocol of protocol v1 with plain msgpack messages.
SUBPROTOCOL = "vital.v1.msgpack"
INGEST_PATH = "/v1/ingest"
SUBSCRIBE_PATH = "/v1/subscribe"
