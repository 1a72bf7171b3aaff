"""Beyond one process: the Redis bus (live topics across nodes, stream leases).

Without a bus URL the server is one process with in-process channels only; with
``bus.url = "redis://host:port"`` (or ``--bus``) nodes share topics and streams.
"""

from .hub import BusHub as BusHub
from .redis import BusCounters as BusCounters
from .redis import RedisBus as RedisBus
from .redis import default_node_id as default_node_id

__all__ = ["BusCounters", "BusHub", "RedisBus", "default_node_id"]
