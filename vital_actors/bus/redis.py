"""The Redis bus: live topics across processes and nodes, and stream ownership leases.

Every node publishes what its own pipeline produces and delivers it to its own
subscribers at once (no round trip through Redis for local readers). It also publishes
the messages that other nodes follow, already encoded, on its Redis channel
``<prefix>live:<node>``; every node reads ``<prefix>live:*`` and hands messages from
*other* nodes to its hub, whose lanes apply the same priority policy as to local
messages. Publishing is batched per tick: the publisher lets a bounded outbox gather
for ``bus.publish_linger_s`` (or until ``bus.publish_batch`` wait), then sends the
batch in one script call (history appends, then one PUBLISH of the whole batch as a
bundle, ``bundle.py``): one round trip and one pub/sub message per batch, not per
message, for the node, Redis and every reader.

Delivery across nodes is at most once, like Redis pub/sub itself: while Redis is away
(restart, network) the outbox fills and further messages are counted as
``bus_dropped`` instead of growing memory; the reader reconnects with backoff and
delivery resumes. What must not be lost is on disk in each node's archive.

History: :meth:`RedisBus.record` appends a positioned message to its topic's Redis
Stream in the same script call (see ``history.py``), so that a subscriber that comes back
on another node recovers what it missed.

Stream ownership: a device's stream belongs to the node holding the lease
``<prefix>lease:<stream>`` (SET NX PX, renewed every lease_s / 3 while the device is
connected, released when it leaves). A device reconnecting to another node gets its
stream there once the old node released it or its lease expired (the node died).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio
import coredis
import trio

from protocol import Event, Hello, RemoteProtocolError, StreamSamples, decode_server

from ..edge.codecs import Outgoing
from ..messages import take_batch
from .bundle import BundleError, pack_bundle, unpack_bundle
from .history import RedisHistory, history_key

if TYPE_CHECKING:
    from .hub import BusHub
from ..settings import BusSettings
from ..streams import StreamInfo, StreamRegistry

__all__ = ["AWAY", "BusCounters", "RedisBus", "client_for", "default_node_id"]

#: Renew each lease this node holds, or takes again one nobody holds (a restarted Redis
#: forgot it), and saves the position of each stream it holds. KEYS: n lease keys, then
#: the n streams' position keys; ARGV: node, lease ms, then per stream: run, next seq, t0
#: ("" when unknown). Returns how many it holds.
_RENEW_ALL = """
local n, held = #KEYS / 2, 0
for i = 1, n do
  local owner = redis.call('GET', KEYS[i])
  if owner == ARGV[1] or not owner then
    redis.call('SET', KEYS[i], ARGV[1], 'PX', ARGV[2])
    held = held + 1
    local a = 3 * i
    if ARGV[a] ~= '' then
      redis.call('HSET', KEYS[n + i], 'run', ARGV[a], 'next_seq', ARGV[a + 1],
                 't0', ARGV[a + 2], 'node', ARGV[1])
    end
  end
end
return held
"""
#: Renew a lease only if this node still holds it (compare and extend, atomically).
_RENEW = ("if redis.call('get', KEYS[1]) == ARGV[1] then "
          "return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end")
_RELEASE = ("if redis.call('get', KEYS[1]) == ARGV[1] then "
            "return redis.call('del', KEYS[1]) else return 0 end")
#: Record then publish one batch. KEYS: the history streams; ARGV: maxlen, ttl_ms, the
#: channel, the bundle ("": nothing to publish), then per key: entry id, payload, prev.
_PUBLISH = """
local maxlen, ttl = ARGV[1], ARGV[2]
for i, key in ipairs(KEYS) do
  local a = 2 + 3 * i
  redis.pcall('XADD', key, 'MAXLEN', '~', maxlen, ARGV[a], 'p', ARGV[a + 1], 'v', ARGV[a + 2])
  redis.call('PEXPIRE', key, ttl)
end
if ARGV[4] ~= '' then redis.call('PUBLISH', ARGV[3], ARGV[4]) end
return #KEYS
"""
#: The scripts' SHA1 digests, for EVALSHA.
_SHA = {script: hashlib.sha1(script.encode()).hexdigest() for script in (_PUBLISH, _RENEW_ALL)}
#: Errors that mean "Redis is not there right now": retry, never crash the node.
AWAY = (coredis.exceptions.ConnectionError, TimeoutError, OSError,
         trio.BrokenResourceError)


#: (topic to publish or None, payload, history (stream key, entry id, prev) or None)
_Outgoing = tuple[str | None, bytes, tuple[str, str, int | str] | None]


def default_node_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(slots=True)
class BusCounters:
    published: int = 0  # messages sent to Redis
    received: int = 0  # messages from other nodes delivered to this hub
    recorded: int = 0  # messages appended to the topics' history streams
    dropped: int = 0  # messages not published: the outbox was full (Redis away or slow)
    reconnects: int = 0
    connected: bool = False
    leases: set[str] = field(default_factory=set)  # streams this node owns now


def client_for(url: str) -> coredis.Redis[bytes]:
    parts = urlsplit(url)
    if parts.scheme != "redis":
        raise ValueError(f"bus URL must be redis://host:port, got {url!r}")
    return coredis.Redis(host=parts.hostname or "127.0.0.1", port=parts.port or 6379,
                         connect_timeout=2.0, stream_timeout=5.0)


class RedisBus:
    """One node's connection to the bus. Start :meth:`run` in the server's nursery."""

    def __init__(self, settings: BusSettings, *, node: str | None = None) -> None:
        assert settings.url is not None
        self.settings = settings
        self.url = settings.url
        self.node = node or settings.node or default_node_id()
        self.prefix = settings.prefix
        self.counters = BusCounters()
        self._outbox_tx, self._outbox_rx = trio.open_memory_channel[_Outgoing](settings.outbox)
        self._client = client_for(self.url)
        self.history = RedisHistory(self._client, self.prefix)
        self._hub: BusHub | None = None
        self._elsewhere: frozenset[str] = frozenset()  # topics other nodes' subscribers follow
        self._learned = trio.Event()  # set (and replaced) after each refresh of _elsewhere
        self._advertised: frozenset[str] = frozenset()  # what this node last advertised
        self._advertise = trio.Event()  # set: advertise now, not at the next round
        self._leases_changed = trio.Event()
        self._queued = self._handled = 0  # outbox items queued, and published or dropped
        self._progress = trio.Event()  # set (and replaced) after each batch
        self._renewed = trio.Event()  # set (and replaced) after each round of renewals

    # --- publishing (sync: called from the broadcaster's loop) -----------------------------

    def publish(self, topic: str, out: Outgoing) -> None:
        """Queue *out* (a message on *topic*) for the other nodes, never blocking."""
        self._queue((topic, out.payload, None))

    def record(self, topic: str, out: Outgoing, *, epoch: str, offset: int,
               prev: int | None, publish: bool) -> None:
        """Queue *out* (at *offset* of *topic*'s *epoch*; *prev*: the offset recorded
        before it, None if unknown) for the topic's history stream, and (*publish*) for
        the other nodes' live subscribers; never blocking."""
        key = history_key(self.prefix, topic, epoch)
        self._queue((topic if publish else None, out.payload,
                     (key, f"{offset}-1", "u" if prev is None else prev)))

    def _queue(self, item: _Outgoing) -> None:
        try:
            self._outbox_tx.send_nowait(item)
            self._queued += 1
        except trio.WouldBlock:
            self.counters.dropped += 1

    async def flushed(self) -> None:
        """Return once everything queued so far was written to Redis (or dropped)."""
        target = self._queued
        while self._handled < target:
            await self._progress.wait()

    async def recorded(self, count: int) -> None:
        """Return once *count* messages in all were recorded in the history streams."""
        while self.counters.recorded < count:
            await self._progress.wait()

    def followed_elsewhere(self, topic: str) -> bool:
        """Does a subscriber on another node follow *topic* (as last advertised)?"""
        return topic in self._elsewhere

    def advertise_soon(self) -> None:
        """This node's subscribers follow a new topic: advertise it now, not up to
        ``interest_s`` later (a device that connects elsewhere meanwhile would have its
        first frames published to nobody)."""
        self._advertise.set()

    async def advertised(self, topic: str) -> None:
        """Return once this node has advertised *topic* on the bus."""
        while topic not in self._advertised:
            await self._learned.wait()

    async def learned(self, topic: str) -> None:
        """Return once this node knows that another node's subscribers follow *topic*."""
        while topic not in self._elsewhere:
            await self._learned.wait()

    async def run(self, hub: BusHub, registry: StreamRegistry, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Publish the outbox, read the other nodes' messages into *hub*, renew the
        leases of *registry*'s streams; until cancelled. Survives Redis going away and
        coming back."""
        self._hub = hub
        async with self._client, trio.open_nursery() as nursery:
            nursery.start_soon(self._publisher)
            await nursery.start(self._reader)
            nursery.start_soon(self._renewer, registry)
            nursery.start_soon(self._interest, hub)
            task_status.started()

    async def _publisher(self) -> None:
        batch_max, linger = self.settings.publish_batch, self.settings.publish_linger_s
        while True:
            # The first message, then the rest of its tick (linger): one round trip each.
            batch = await take_batch(self._outbox_rx, max_batch=batch_max, linger=linger)
            try:
                await self._send(batch)
            except AWAY:
                self.counters.dropped += len(batch)
                await trio.sleep(self.settings.retry_s)
            self._handled += len(batch)
            self._progress.set()
            self._progress = trio.Event()

    async def _send(self, batch: list[_Outgoing]) -> None:
        """Record *batch*'s history entries, then publish its live part as one bundle:
        one script call."""
        keys: list[str] = []
        live: list[tuple[str, bytes]] = []
        args: list[Any] = [self.settings.history_maxlen, round(self.settings.history_s * 1000),
                           f"{self.prefix}live:{self.node}", b""]
        for topic, payload, entry in batch:
            if entry is not None:
                keys.append(entry[0])
                args += [entry[1], payload, entry[2]]
            if topic is not None:
                live.append((topic, payload))
        if live:
            args[3] = pack_bundle(live)
        await self._script(_PUBLISH, keys, args)
        self.counters.published += len(live)
        self.counters.recorded += len(keys)

    async def _script(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """Run *script* by its SHA1 (EVALSHA), loading it first if Redis does not know it
        (new or restarted). Cheaper per call than coredis's ``Script`` wrapper."""
        sha = _SHA[script]
        try:
            return await self._client.evalsha(sha, keys=keys, args=args)
        except coredis.exceptions.NoScriptError:
            await self._client.script_load(script)
            return await self._client.evalsha(sha, keys=keys, args=args)

    async def _reader(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                      ) -> None:
        started = False
        pattern = f"{self.prefix}live:*"
        skip = len(self.prefix) + 5
        while True:
            try:
                try:
                    async with self._subscription(pattern) as messages:
                        self.counters.connected = True
                        if not started:
                            started = True
                            task_status.started()
                        async for message in messages:
                            await self._deliver(message, skip)
                except* anyio.ClosedResourceError:
                    pass  # leaving (or cancelled) on a connection that was already gone
            except Exception:  # Redis went away, in any of coredis's ways: reconnect
                pass
            self.counters.connected = False
            if not started:  # the first connection failed: start anyway, keep trying
                started = True
                task_status.started()
            self.counters.reconnects += 1
            await trio.sleep(self.settings.retry_s)

    @contextlib.asynccontextmanager
    async def _subscription(self, pattern: str) -> AsyncIterator[AsyncIterator[Any]]:
        client = client_for(self.url)  # its own connection: pub/sub holds it
        async with client, client.pubsub(patterns=[pattern],
                                         ignore_subscribe_messages=True) as pubsub:
            yield pubsub

    async def _deliver(self, message: Any, skip: int) -> None:
        """Hand the messages of another node's bundle that this node wants to its hub,
        in order; each one is decoded only when it is wanted here."""
        hub = self._hub
        if message.get("type") != "pmessage" or hub is None:
            return
        if bytes(message["channel"])[skip:].decode() == self.node:
            return  # our own: delivered locally already
        try:
            entries = unpack_bundle(bytes(message["data"]))
        except BundleError:
            return  # not ours to crash on: another version or garbage on the channel
        for topic, payload in entries:
            if not hub.wanted_here(topic):
                continue  # nobody here follows it (another node does)
            try:
                decoded = decode_server(payload)
            except RemoteProtocolError:
                continue
            if not isinstance(decoded, StreamSamples | Event) or decoded.topic != topic:
                continue
            self.counters.received += 1
            await hub.fill_before(decoded)
            hub.take_remote(decoded, payload)

    async def _interest(self, hub: BusHub) -> None:
        """Every ``interest_s``: advertise the topics this node's subscribers follow (a
        set that expires if the node dies) and learn the other nodes' topics."""
        mine = self._key("interest", self.node)
        nodes = f"{self.prefix}nodes"
        ttl = max(1, round(3 * self.settings.interest_s))
        while True:
            self._advertise = trio.Event()
            with contextlib.suppress(*AWAY):
                topics = hub.local_topics()
                async with self._client.pipeline(transaction=True) as pipe:
                    pipe.delete([mine])
                    if topics:
                        pipe.sadd(mine, list(topics))
                    pipe.expire(mine, ttl)
                    pipe.sadd(nodes, [self.node])
                self._advertised = frozenset(topics)
                await self._learn()
            with trio.move_on_after(self.settings.interest_s):
                await self._advertise.wait()

    async def _learn(self) -> None:
        """Refresh which topics the other nodes' subscribers follow."""
        nodes = f"{self.prefix}nodes"
        others = [n.decode() for n in await self._client.smembers(nodes)
                  if n.decode() != self.node]
        keys = [self._key("interest", n) for n in others]
        union = await self._client.sunion(keys) if keys else set()
        self._elsewhere = frozenset(t.decode() for t in union)
        self._learned.set()
        self._learned = trio.Event()

    # --- stream ownership -----------------------------------------------------------------

    def _key(self, kind: str, stream: str) -> str:
        return f"{self.prefix}{kind}:{stream}"

    async def claim(self, hello: Hello, registry: StreamRegistry) -> bool:
        """Take the lease on *hello.stream* for this node (True), or find it held by
        another node (False). A stream that lived on another node before continues here
        from the position that node saved (its run, next seq and sample index), so its
        device resumes; frames it acknowledged after its last save show as a gap.

        With Redis away, a node keeps serving the devices that reach it: True
        (availability over strict single ownership while the bus is down).
        """
        stream, px = hello.stream, round(self.settings.lease_s * 1000)
        key = self._key("lease", stream)
        try:
            if not await self._client.set(key, self.node, condition=coredis.PureToken.NX,
                                          px=px) and not await self._client.eval(
                    _RENEW, keys=[key], args=[self.node, px]):
                return False
            saved = await self._client.hgetall(self._key("stream", stream))
        except AWAY:
            saved = {}
        self.counters.leases.add(stream)
        try:
            with contextlib.suppress(*AWAY):
                await self._learn()  # who follows this stream elsewhere, before its first frame
        except BaseException:  # cancelled (say, the device left) before the caller knew
            self._drop(stream)  # it holds the lease: no longer renewed, it expires
            raise
        info = registry.get(stream)
        if saved and hello.resume is not None and (info is None or not info.connected):
            run, next_seq, t0 = (int(saved[k]) for k in (b"run", b"next_seq", b"t0"))
            if info is None or (info.run, info.next_seq) < (run, next_seq):
                registry.restore(hello, run=run, next_seq=next_seq, t0=t0)
        return True

    async def release(self, info: StreamInfo) -> None:
        """Save *info*'s position for whichever node serves its device next, and give
        up the lease."""
        with contextlib.suppress(*AWAY):
            await self._save(info)
            await self._client.eval(_RELEASE, keys=[self._key("lease", info.id)],
                                    args=[self.node])
        self._drop(info.id)

    def _drop(self, stream: str) -> None:
        self.counters.leases.discard(stream)
        self._leases_changed.set()
        self._leases_changed = trio.Event()

    async def released(self, stream: str) -> None:
        """Return once this node holds no lease on *stream*."""
        while stream in self.counters.leases:
            await self._leases_changed.wait()

    async def renewed(self) -> None:
        """Return after the next round of lease renewals."""
        await self._renewed.wait()

    async def _save(self, info: StreamInfo) -> None:
        await self._client.hset(self._key("stream", info.id), {
            "run": info.run, "next_seq": info.next_seq, "t0": info.t0, "node": self.node})

    async def _renewer(self, registry: StreamRegistry) -> None:
        """Every ``lease_s / 3``: renew every lease this node holds and save its streams'
        positions, in one script call (one round trip however many streams)."""
        px = round(self.settings.lease_s * 1000)
        while True:
            await trio.sleep(self.settings.lease_s / 3)
            streams = list(self.counters.leases)
            if not streams:
                continue
            args: list[Any] = [self.node, px]
            for stream in streams:
                info = registry.get(stream)
                args += ["", "", ""] if info is None else [info.run, info.next_seq, info.t0]
            keys = ([self._key("lease", stream) for stream in streams]
                    + [self._key("stream", stream) for stream in streams])
            with contextlib.suppress(*AWAY):
                await self._script(_RENEW_ALL, keys, args)
            self._renewed.set()
            self._renewed = trio.Event()
