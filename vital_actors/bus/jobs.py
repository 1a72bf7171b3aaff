"""The job queue over Redis: any node queues a job, any node with a free slot runs it.

Keys (``<prefix>`` is ``bus.prefix``)::

    <prefix>jobs:state    hash  id -> the Job's JSON (state, progress, rate, ETA, node)
    <prefix>jobs:score    hash  id -> its queue score (priority rank, then age)
    <prefix>jobs:queue    zset  waiting jobs by score (most urgent, then oldest, first)
    <prefix>jobs:running  zset  claimed jobs by lease deadline (Redis TIME, ms)
    <prefix>jobs:owner    hash  id -> the node holding its lease
    <prefix>jobs:cancel   set   running jobs asked to stop
    <prefix>jobs:seeded   key   present once the queue was rebuilt from the store

Every change of ownership is one Lua script, so it is atomic: :data:`_CLAIM` first puts
back in the queue every job whose lease ran out (its node died or stalled), then pops
the most urgent job and leases it to the caller. The node running a job renews its
lease every ``lease_s / 3`` and, between chunks, learns whether it still holds it and
whether someone asked it to stop (:data:`_CHECK`). A job taken over resumes from its
last checkpoint, which lives in the shared store (``<store.dir>/jobs/<id>/``).

Redis holds no data that cannot be rebuilt: when ``jobs:seeded`` is missing (a fresh
or restarted Redis), the next node to poll re-adopts every unfinished job of the store
(:data:`_ADOPT`): queued ones back into the queue, running ones leased to the node
their ``job.json`` names, so that node keeps running them if it is alive.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any, Literal

import anyio
import trio

from ..jobs import Job, JobBoardUnavailableError, rank
from ..settings import BusSettings
from .redis import AWAY, client_for, default_node_id

__all__ = ["RedisJobBoard", "score"]

_NOW = "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000) "

#: KEYS queue running owner score seeded; ARGV node lease_ms.
#: Returns the claimed id, "" for none, or "seed" when the queue must be rebuilt first.
_CLAIM = _NOW + """
if redis.call('EXISTS', KEYS[5]) == 0 then return 'seed' end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  redis.call('ZREM', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
  redis.call('ZADD', KEYS[1], redis.call('HGET', KEYS[4], id) or 0, id)
end
local popped = redis.call('ZPOPMIN', KEYS[1])
if #popped == 0 then return '' end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), popped[1])
redis.call('HSET', KEYS[3], popped[1], ARGV[1])
return popped[1]
"""

#: KEYS running owner cancel queue; ARGV node lease_ms id...
#: Renews each id held by node, taking back one that has no owner now (Redis forgot it,
#: or its lease ran out and it waits in the queue: out of the queue, then); returns, per
#: id, 0 (lost to another node), 1 (held) or 2 (held, and asked to stop).
_CHECK = _NOW + """
local out = {}
for i = 3, #ARGV do
  local id, owner = ARGV[i], redis.call('HGET', KEYS[2], ARGV[i])
  if owner == ARGV[1] or not owner then
    redis.call('ZREM', KEYS[4], id)
    redis.call('HSET', KEYS[2], id, ARGV[1])
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), id)
    out[#out + 1] = 1 + redis.call('SISMEMBER', KEYS[3], id)
  else
    out[#out + 1] = 0
  end
end
return out
"""

#: KEYS queue running owner cancel; ARGV node id requeue(0/1).
#: Gives up node's lease on id (if requeue is 1: back in the queue, in its old place).
_RELEASE = """
if redis.call('HGET', KEYS[3], ARGV[2]) ~= ARGV[1] then return 0 end
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[2])
redis.call('SREM', KEYS[4], ARGV[2])
if ARGV[3] == '1' then redis.call('ZADD', KEYS[1], ARGV[4], ARGV[2]) end
return 1
"""

#: KEYS queue running cancel; ARGV id. "queued": taken out of the queue (the caller
#: finishes it), "running": its node is asked to stop, "": neither (finished, unknown).
_CANCEL = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then return 'queued' end
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  redis.call('SADD', KEYS[3], ARGV[1])
  return 'running'
end
return ''
"""

#: KEYS state queue running owner score; ARGV id json score node lease_ms.
#: Adopts a job found in the store unless Redis knows it already.
_ADOPT = _NOW + """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[5], ARGV[1], ARGV[3])
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[4], ARGV[1], ARGV[4])
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[5]), ARGV[1])
else
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
end
return 1
"""


def score(job: Job) -> int:
    """Queue order: priority rank first, then creation time (ms): exact in a double."""
    return rank(job) * 10**13 + round(job.created * 1000)


class RedisJobBoard:
    """One node's view of the shared job queue (see the module docstring).

    :meth:`open` holds its Redis connection; the runner calls the rest while it is open.
    """

    def __init__(self, settings: BusSettings, *, node: str | None = None) -> None:
        assert settings.url is not None
        self.settings = settings
        self.node = node or settings.node or default_node_id()
        self.lease_ms = round(settings.lease_s * 1000)
        p = f"{settings.prefix}jobs:"
        self.k_state, self.k_score, self.k_queue = p + "state", p + "score", p + "queue"
        self.k_running, self.k_owner = p + "running", p + "owner"
        self.k_cancel, self.k_seeded = p + "cancel", p + "seeded"
        self._client = client_for(settings.url)
        self._wakeup = trio.Event()
        self._held: set[str] = set()

    @contextlib.asynccontextmanager
    async def open(self, seed: Iterable[Job]) -> AsyncIterator[RedisJobBoard]:
        """Connect; renew this node's leases in the background while open. *seed*
        (re-read on each use) lists the store's unfinished jobs, adopted whenever Redis
        has lost the queue."""
        self._seed = seed
        async with self._client, trio.open_nursery() as nursery:
            nursery.start_soon(self._renewer)
            yield self
            nursery.cancel_scope.cancel()

    async def _eval(self, script: str, keys: list[str], args: list[Any]) -> Any:
        return await self._client.eval(script, keys=keys, args=args)

    # --- the API's calls (any node) --------------------------------------------------------

    async def put(self, job: Job) -> None:
        """Make *job* (new, queued) known to every node and queue it."""
        with _reachable():
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hset(self.k_state, {job.id: job.model_dump_json()})
                pipe.hset(self.k_score, {job.id: score(job)})
                pipe.zadd(self.k_queue, {job.id: score(job)})
        self._wakeup.set()

    async def queued(self) -> int:
        with _reachable():
            return await self._client.zcard(self.k_queue)

    async def get(self, job_id: str) -> Job | None:
        with _reachable():
            raw = await self._client.hget(self.k_state, job_id)
        return None if raw is None else Job.model_validate_json(raw)

    async def all(self) -> list[Job]:
        with _reachable():
            saved = await self._client.hgetall(self.k_state)
        return sorted((Job.model_validate_json(v) for v in saved.values()),
                      key=lambda j: j.created)

    async def cancel(self, job_id: str) -> Literal["queued", "running", ""]:
        with _reachable():
            found = await self._eval(_CANCEL, [self.k_queue, self.k_running, self.k_cancel],
                                     [job_id])
        out = _text(found)
        assert out in ("queued", "running", "")
        return out  # type: ignore[return-value]

    # --- running (this node) ---------------------------------------------------------------

    async def save(self, job: Job) -> None:
        """Publish *job*'s state to every node; with Redis away the next save will."""
        with contextlib.suppress(*AWAY):
            await self._client.hset(self.k_state, {job.id: job.model_dump_json()})

    async def take(self) -> Job:
        """Wait until this node claims a job. Polls every ``bus.job_poll_s`` (at once
        after a :meth:`put` on this node) and rides out Redis being away."""
        while True:
            with contextlib.suppress(*AWAY, JobBoardUnavailableError):
                job_id = await self._claim()
                job = await self.get(job_id) if job_id else None
                if job is not None and job.active:
                    self._held.add(job.id)
                    return job
                if job is not None:  # finished meanwhile (cannot happen: defensive)
                    await self._eval(_RELEASE, self._release_keys, [self.node, job.id, 0, 0])
            with trio.move_on_after(self.settings.job_poll_s):
                await self._wakeup.wait()
            self._wakeup = trio.Event()

    async def _claim(self) -> str:
        keys = [self.k_queue, self.k_running, self.k_owner, self.k_score, self.k_seeded]
        claimed = _text(await self._eval(_CLAIM, keys, [self.node, self.lease_ms]))
        if claimed != "seed":
            return claimed
        await self._adopt_all()
        return ""

    async def _adopt_all(self) -> None:
        keys = [self.k_state, self.k_queue, self.k_running, self.k_owner, self.k_score]
        for job in self._seed:
            node = (job.node or "") if job.state == "running" else ""
            await self._eval(_ADOPT, keys, [job.id, job.model_dump_json(), score(job), node,
                                            self.lease_ms])
        await self._client.set(self.k_seeded, self.node)

    async def check(self, job_id: str) -> tuple[bool, bool]:
        """(does this node still hold *job_id*, was it asked to stop); renews the lease.
        With Redis away: (True, False), the node keeps working on what it holds."""
        try:
            (state,) = await self._check([job_id])
        except AWAY:
            return True, False
        return state > 0, state == 2

    async def _check(self, ids: list[str]) -> list[int]:
        out = await self._eval(_CHECK, [self.k_running, self.k_owner, self.k_cancel,
                                        self.k_queue], [self.node, self.lease_ms, *ids])
        return [int(x) for x in out]

    async def release(self, job: Job) -> None:
        """Give up this node's lease on *job*: it is finished."""
        self._held.discard(job.id)
        with contextlib.suppress(*AWAY):
            await self._eval(_RELEASE, self._release_keys, [self.node, job.id, 0, 0])

    async def hand_back(self, job: Job) -> None:
        """This node stops in the middle of *job* (shutdown): save its state and queue it
        again at once, for another node to resume from its checkpoint. On a connection
        of its own: the shutdown's cancellation may have broken the board's."""
        self._held.discard(job.id)
        with contextlib.suppress(*AWAY, anyio.ClosedResourceError):
            async with client_for(self.settings.url or "") as client:
                await client.hset(self.k_state, {job.id: job.model_dump_json()})
                await client.eval(_RELEASE, keys=self._release_keys,
                                  args=[self.node, job.id, 1, score(job)])

    @property
    def _release_keys(self) -> list[str]:
        return [self.k_queue, self.k_running, self.k_owner, self.k_cancel]

    async def _renewer(self) -> None:
        """Renew every held lease each ``lease_s / 3``, whatever the chunks are doing;
        rebuild the queue if Redis lost it (also when every slot here is busy)."""
        while True:
            await trio.sleep(self.settings.lease_s / 3)
            held = sorted(self._held)
            with contextlib.suppress(*AWAY):
                if held:
                    await self._check(held)
                if not await self._client.exists([self.k_seeded]):
                    await self._adopt_all()


def _text(reply: Any) -> str:
    return reply.decode() if isinstance(reply, bytes) else str(reply or "")


@contextlib.contextmanager
def _reachable() -> Iterator[None]:
    """Redis being away, for the API: JobBoardUnavailableError (503)."""
    try:
        yield
    except AWAY as exc:
        raise JobBoardUnavailableError(f"the job queue (Redis) is unreachable: {exc}") from exc
