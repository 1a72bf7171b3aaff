"""Beyond one process: the Redis bus (live topics across nodes, stream leases, a
shared job queue).

Without a bus URL the server is one process with in-process channels only; with
``bus.url = "redis://host:port"`` (or ``--bus``) nodes share topics and streams.
"""

from .hub import BusHub as BusHub
from .jobs import RedisJobBoard as RedisJobBoard
from .redis import BusCounters as BusCounters
from .redis import RedisBus as RedisBus
from .redis import default_node_id as default_node_id

__all__ = ["BusCounters", "BusHub", "RedisBus", "RedisJobBoard", "default_node_id"]
