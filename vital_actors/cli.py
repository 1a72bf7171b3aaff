"""The ``vital-actors`` command: serve, simulate, subscribe, demo, eval."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import trio

from .auth import AuthConfigError, add_token_command, token_command
from .bus import default_node_id
from .clients import StreamSummary, run_devices, run_summary
from .graph import Server
from .lag import steady_collector
from .sdk import FatalError
from .sdk._connection import leaves
from .settings import Settings, SettingsError, load_settings
from .sources import Recording, data_dir, list_records, load_record, synthetic_ecg

__all__ = ["main"]


def _recordings(folder: Path | None, count: int) -> list[tuple[str, Recording]]:
    """*count* (stream id, recording) pairs from the WFDB records in *folder*, cycling
    through them; synthetic ECG at varied heart rates when *folder* is None."""
    if folder is None:
        return [(f"sim{i + 1}", synthetic_ecg(seconds=120, heart_rate=60 + 7 * (i % 10),
                                              seed=i, name=f"sim{i + 1}")) for i in range(count)]
    paths = list_records(folder)
    if not paths:
        raise SystemExit(f"no WFDB records (*.hea) in {folder}")
    loaded = [_load(p) for p in paths[:count]]
    out = []
    for i in range(count):
        rec = loaded[i % len(loaded)]
        lap = i // len(loaded)
        out.append((rec.name if lap == 0 else f"{rec.name}-{lap + 1}", rec))
    return out


def _load(path: Path) -> Recording:
    try:
        return load_record(path)
    except (OSError, ValueError) as exc:  # wfdb's header and format errors are ValueErrors
        raise SystemExit(f"cannot read WFDB record {path}: {exc}") from None


async def _until_signal(server: Server) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            print("\nstopping: closing connections (1001) ...", file=sys.stderr)
            server.shutdown()
            return


def _count_arg(text: str) -> int:
    """argparse type of a --workers or --devices: a whole number, at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: at least 1") from None
    return value


def _ws_url_arg(url: str) -> str:
    """argparse type of a --url the devices and subscribers connect to: ws://host[:port]."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError when out of range or not a number)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{url!r}: {exc}") from None
    if parts.scheme != "ws":
        raise argparse.ArgumentTypeError(f"{url!r}: expected ws://host[:port]")
    return url


def _ws_url(http_url: str) -> str:
    return "ws" + http_url.removeprefix("http")


async def serve(settings: Settings, *, devices: list[tuple[str, Recording]] | None = None,
                banner: bool = True) -> None:
    try:
        server = Server(settings)
    except AuthConfigError as exc:
        raise SystemExit(f"refusing to start: {exc}") from None
    with contextlib.ExitStack() as serving:
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(server.run)
            except* OSError as group:  # the port is taken, a folder unusable: not started
                raise StartError(f"cannot start: {next(leaves(group))}") from None
            serving.enter_context(steady_collector(settings.server.gc_thresholds))
            nursery.start_soon(_until_signal, server)
            if banner:
                print(f"vital-actors serving on {server.url}  "
                      f"(ws: {_ws_url(server.url)}/v1/ingest, /v1/subscribe)", flush=True)
            if devices:
                nursery.start_soon(_simulate_until_stop, server, devices)


class StartError(Exception):
    """The server could not start (an operator's matter, said in one line)."""


def _run_server(serving: Callable[[], Awaitable[None]]) -> None:
    """Run the server; a failure to start ends the command with its reason, not a
    traceback (what fails once it runs still shows one: that is a bug)."""
    try:
        trio.run(serving)
    except* StartError as group:
        raise SystemExit(str(next(leaves(group)))) from None


async def _simulate_until_stop(server: Server, devices: list[tuple[str, Recording]]) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(run_devices, _ws_url(server.url), devices,
                                   on_error=_device_error))
        await server.stopping.wait()
        nursery.cancel_scope.cancel()


def _device_error(stream: str, exc: BaseException) -> None:
    print(f"device {stream}: {type(exc).__name__}: {exc}; reconnecting", file=sys.stderr)


def _show(table: dict[str, StreamSummary], interval: float) -> None:
    away = table and not any(row.connected for row in table.values())
    print(f"{'stream':<12}{'msg/s':>8}{'samples/s':>11}{'HR':>5}  quality     alerts"
          + ("   (connection lost: reconnecting)" if away else ""))
    for stream, row in sorted(table.items()):
        print(f"{stream:<12}{row.messages / interval:>8.1f}{row.samples / interval:>11.0f}"
              f"{row.hr:>5}  {row.quality:<11} {'; '.join(row.alerts)}")
    print(flush=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vital-actors", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (("serve", "run the server"),
                        ("demo", "run the server with simulated devices replaying MIT-BIH")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("--host", help="bind address (default 127.0.0.1)")
        s.add_argument("--port", type=int, help="port for HTTP and WebSocket (default 8080)")
        s.add_argument("--settings", type=Path, help="TOML settings file")
        s.add_argument("--bus", metavar="redis://HOST:PORT",
                       help="share topics and streams with other processes over Redis")
    sub.choices["serve"].add_argument(
        "--workers", type=_count_arg, default=1,
        help="N processes on one port (SO_REUSEPORT) joined by --bus (default 1)")
    demo = sub.choices["demo"]
    demo.add_argument("--devices", type=_count_arg, default=4)
    demo.add_argument("--data", type=Path, help="WFDB folder (default ../shared/data/mitdb)")
    sim = sub.add_parser("simulate", help="devices replaying WFDB records (or synthetic ECG)")
    sim.add_argument("--url", default="ws://127.0.0.1:8080", type=_ws_url_arg)
    sim.add_argument("--devices", type=_count_arg, default=4)
    sim.add_argument("--data", type=Path, help="WFDB folder; synthetic ECG when omitted")
    sim.add_argument("--frame-ms", type=float, default=100.0)
    sim.add_argument("--stagger-ms", type=float, default=500.0)
    sim.add_argument("--zstd", action="store_true",
                     help="speak vital.v1.msgpack+zstd (with the shipped dictionary)")
    ev = sub.add_parser("eval", help="score beats (qrs) or signal quality (sqi) on MIT-BIH")
    ev.add_argument("what", choices=("qrs", "sqi"))
    ev.add_argument("folder", type=Path, help="WFDB folder: mitdb (qrs) or nstdb (sqi)")
    ev.add_argument("--frame-ms", type=float, default=1000.0, help="replay frame length")
    lt = sub.add_parser("loadtest", add_help=False,
                        help="run a load scenario against the server and a bare relay "
                             "(loadtest --help; scenarios in loadtests/scenarios)")
    lt.add_argument("args", nargs=argparse.REMAINDER)
    add_token_command(sub)
    subs = sub.add_parser("subscribe", help="live summary per stream")
    subs.add_argument("--url", default="ws://127.0.0.1:8080", type=_ws_url_arg)
    subs.add_argument("--stream", action="append", default=[], help="only these streams")
    subs.add_argument("--zstd", action="store_true",
                      help="speak vital.v1.msgpack+zstd (with the shipped dictionary)")
    up = sub.add_parser("upload", help="upload a recording (NPY, CSV, EDF, WFDB zip/tar)")
    up.add_argument("file", type=Path)
    up.add_argument("--url", default="http://127.0.0.1:8080")
    up.add_argument("--format", choices=("npy", "csv", "edf", "wfdb"), help="default: sniffed")
    up.add_argument("--fs", type=float, help="sampling rate (NPY, CSV without a time column)")
    up.add_argument("--channels", help="comma-separated channel names")
    up.add_argument("--gain", type=float, help="units per mV (NPY)")
    up.add_argument("--baseline", type=float, help="value at 0 mV (NPY)")
    up.add_argument("--no-resume", action="store_true",
                    help="one plain POST, not the resumable protocol (which continues "
                         "after a broken connection by itself)")
    return p


def _upload(args: argparse.Namespace) -> None:
    from .uploader import ProgressBar, UploadError, upload_file

    query = {k: str(v) for k, v in (("format", args.format), ("fs", args.fs),
                                    ("channels", args.channels), ("gain", args.gain),
                                    ("baseline", args.baseline), ("name", args.file.name))
             if v is not None}
    try:
        status, answer = trio.run(partial(upload_file, args.url, args.file, query=query,
                                          on_progress=ProgressBar(),
                                          resumable=not args.no_resume,
                                          on_resume=_resuming))
    except (UploadError, OSError) as exc:
        raise SystemExit(f"upload failed: {exc}") from None
    if status != 201:
        raise SystemExit(f"upload refused ({status}): {answer.get('error', answer)}")
    print(f"{answer['id']}: {answer['frames']} frames x {len(answer['channels'])} channels "
          f"at {answer['fs']:g} Hz ({answer['duration_s']:.0f} s), {answer['source_format']}")


def _resuming(offset: int) -> None:
    sys.stderr.write(f"\nconnection lost; resuming at {offset / 1e6:.0f} MB\n")


def _settings(args: argparse.Namespace) -> Settings:
    server = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    try:
        base = load_settings(args.settings)
        # Dicts, not model_copy(update=...): that skips validation (--port 70000 bound 4464).
        changes: dict[str, Any] = {}
        if server:
            changes["server"] = {**base.server.model_dump(), **server}
        if args.bus:
            changes["bus"] = {**base.bus.model_dump(), "url": args.bus}
        return load_settings(args.settings, **changes) if changes else base
    except SettingsError as exc:
        raise SystemExit(str(exc)) from None


def _serve_workers(args: argparse.Namespace) -> None:
    """``serve --workers N``: this process supervises N ordinary ``serve`` processes."""
    settings = _settings(args)
    if settings.bus.url is None:
        raise SystemExit("--workers needs a bus: --bus redis://HOST:PORT (or bus.url)")
    if settings.server.port == 0:
        raise SystemExit("--workers needs a fixed --port: the workers share it")
    from .bus.workers import run_workers

    argv = [sys.executable, "-m", "vital_actors.cli", "serve", "--host",
            settings.server.host, "--port", str(settings.server.port)]
    if args.settings:
        argv += ["--settings", str(args.settings)]
    trio.run(partial(run_workers, args.workers, argv, bus_url=settings.bus.url,
                     node_prefix=settings.bus.node or default_node_id()))


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "serve" and args.workers > 1:
        _serve_workers(args)
    elif args.command == "serve":
        _run_server(partial(serve, _settings(args)))
    elif args.command == "demo":
        if args.data is not None and not args.data.is_dir():
            raise SystemExit(f"--data {args.data}: no such folder")
        folder = args.data or ((data_dir() or Path("/nonexistent")) / "mitdb")
        use = folder if folder.is_dir() else None
        devices = _recordings(use, args.devices)
        settings = _settings(args)
        url = f"http://{settings.server.host}:{settings.server.port}"
        print(f"demo: {len(devices)} devices replaying "
              f"{'MIT-BIH records from ' + str(use) if use else 'synthetic ECG'}\n"
              f"  open   {url}/  (live monitor: waveforms, heart rate, quality, alerts)\n"
              f"         {url}/viewer  (recordings: upload, zoom, jobs)\n"
              f"  watch  vital-actors subscribe --url {_ws_url(url)}\n"
              f"  API    {url}/api/v1/streams   {url}/openapi.json   {url}/metrics\n"
              "  Ctrl-C stops cleanly.", flush=True)
        _run_server(partial(serve, settings, devices=devices))
    elif args.command == "simulate":
        devices = _recordings(args.data, args.devices)
        trio.run(partial(run_devices, args.url, devices, frame_s=args.frame_ms / 1000,
                         stagger_s=args.stagger_ms / 1000, on_error=_device_error,
                         zstd=args.zstd))
    elif args.command == "eval":
        from .quality import evaluate  # wfdb and the scoring only load for this command

        run = evaluate.eval_qrs if args.what == "qrs" else evaluate.eval_sqi
        try:
            run(args.folder, frame_s=args.frame_ms / 1000)
        except evaluate.NoRecordsError as exc:
            raise SystemExit(str(exc)) from None
    elif args.command == "upload":
        _upload(args)
    elif args.command == "loadtest":
        from loadtests.run import main as loadtest  # matplotlib and friends: only here

        loadtest(args.args)
    elif args.command == "token":
        try:
            print(token_command(args, load_settings(args.settings)))
        except SettingsError as exc:
            raise SystemExit(str(exc)) from None
    elif args.command == "subscribe":
        # Ctrl-C or a closed pipe (`| head`) ends a watch; neither is an error, also
        # when it comes out of a nursery wrapped in an exception group.
        try:
            trio.run(partial(run_summary, args.url, streams=args.stream, show=_show,
                             zstd=args.zstd))
        except* (KeyboardInterrupt, BrokenPipeError):
            pass
        except* FatalError as group:
            raise SystemExit(f"subscribe: refused: {group.exceptions[0]}") from None


if __name__ == "__main__":
    main()
