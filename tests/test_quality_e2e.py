"""Beats and quality through a real server: the live screen gives the batch chain's beats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.signal
import trio
from httpclient import get_json

import protocol as P
from vital_actors.clients import connect, receive
from vital_actors.graph import Server
from vital_actors.quality import QualityChain
from vital_actors.settings import ScreenSettings
from vital_actors.sources import frame_sizes, frames, load_record


async def test_live_beats_and_quality_equal_the_batch_chain(server: Server, mitdb: Path) -> None:
    rec = load_record(mitdb / "208", stop=30 * 360)  # 30 s with PVCs
    sizes = list(frame_sizes(len(rec.samples), rng=np.random.default_rng(208), max_frame=400))
    url = f"ws://127.0.0.1:{server.port}"
    topics = ("stream/208/beats", "stream/208/quality")
    async with connect(url, P.SUBSCRIBE_PATH) as sub:
        await sub.send_message(P.encode(P.Subscribe(topics)))
        while not isinstance(msg := await receive(sub), P.Event) or msg.topic != "subscriptions":
            pass
        async with connect(url, P.INGEST_PATH) as dev:
            await dev.send_message(P.encode(P.Hello("208", 360.0, ("MLII", "V1"), "int16",
                                                    (200.0, 200.0), (1024.0, 1024.0))))
            assert isinstance(await receive(dev), P.Welcome)
            for seq, chunk in enumerate(frames(rec.samples, sizes)):
                data = np.ascontiguousarray(chunk, "<i2").tobytes()
                await dev.send_message(P.encode(P.Samples(seq, len(chunk), data)))
            events: list[P.Event] = []
            with trio.fail_after(30):
                while sum(e.type == "quality" for e in events) < 30:
                    msg = await receive(sub)
                    if isinstance(msg, P.Event) and msg.topic in topics:
                        events.append(msg)
        info = await get_json(server.port or 0, "/api/v1/streams/208")
    # The batch chain, offline, on the same samples with the stream's own filter.
    mv = np.asarray(rec.samples * (1 / 200.0) - 1024.0 / 200.0, dtype=np.float64)
    filtered = scipy.signal.sosfilt(np.array(info["filter"]["sos"]), mv, axis=0)
    offline = QualityChain(ScreenSettings()).feed_one("208", 360.0, 0, mv, filtered)
    beats = [e for e in events if e.type == "beat"]
    assert all(e.priority == P.Priority.HIGH for e in beats)
    assert [e.body["r"] for e in beats] == [e.body["r"] for e in offline if e.type == "beat"]
    assert len(beats) > 30
    quality = [e.body for e in events if e.type == "quality"]
    assert [q["t0"] + q["n"] for q in quality] == list(range(360, 30 * 360 + 1, 360))
    assert quality[-1]["hr"] == next(e.body["hr"] for e in reversed(offline)
                                     if e.type == "quality")
