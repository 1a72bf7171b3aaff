"""Typed messages that travel between the actors over memory channels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from protocol import Event, StreamSamples

if TYPE_CHECKING:
    from .streams import StreamInfo

__all__ = ["Block", "Filtered", "Item", "Publication"]


@dataclass(frozen=True, slots=True, eq=False)
class Block:
    """One accepted device frame, in the device's dtype, shape (n, channels)."""

    stream: StreamInfo
    run: int
    seq: int
    t0: int
    raw: npt.NDArray[np.generic]
    received: float  # trio.current_time() when ingest accepted it

    @property
    def n(self) -> int:
        return int(self.raw.shape[0])


@dataclass(frozen=True, slots=True, eq=False)
class Filtered:
    """A block with its signal in mV (``mv``) and filtered (``filtered``), both float64."""

    block: Block
    mv: npt.NDArray[np.float64]
    filtered: npt.NDArray[np.float64]
    filter_version: int


@dataclass(frozen=True, slots=True, eq=False)
class Publication:
    """A ready server message for its topic (``message.topic``)."""

    message: StreamSamples | Event


#: What flows down the live pipeline: data, and events kept in order with it.
Item = Block | Filtered | Publication
