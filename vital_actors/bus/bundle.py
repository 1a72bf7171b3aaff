"""What crosses nodes on the bus: bundles of already encoded messages.

A node publishes one bundle per batch of its bus outbox on its own channel
``<prefix>live:<node>``: a msgpack array of ``[topic, payload]`` pairs, in the order the
node produced them (so each topic's order is kept), *payload* being the message encoded
exactly as the node's subscribers receive it. One PUBLISH per batch instead of one per
message: Redis, the publishing node and every receiving node handle one pub/sub message
per batch, and a receiver routes each entry by its topic before it decodes anything.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgpack

__all__ = ["BundleError", "pack_bundle", "unpack_bundle"]


class BundleError(ValueError):
    """The data is not a bundle (another version, or garbage on the channel)."""


def pack_bundle(entries: Sequence[tuple[str, bytes]]) -> bytes:
    """The bundle of *entries* (``(topic, payload)``, in order)."""
    return msgpack.packb(entries)  # type: ignore[no-any-return]


def unpack_bundle(data: bytes) -> list[tuple[str, bytes]]:
    """The ``(topic, payload)`` entries of a bundle. Raises :class:`BundleError`."""
    try:
        entries = msgpack.unpackb(data, use_list=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise BundleError(f"not a bundle: {exc}") from exc
    if not isinstance(entries, tuple) or not all(
            isinstance(e, tuple) and len(e) == 2 and isinstance(e[0], str)
            and isinstance(e[1], bytes) for e in entries):
        raise BundleError("not a bundle: expected an array of [topic, payload] pairs")
    return list(entries)
