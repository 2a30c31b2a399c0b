"""`greenchannel checkpoint`: a checkpoint station, verifying passes offline and serving its page."""

from __future__ import annotations

from pathlib import Path

from .dashboard import add_token_arguments, page_access

__all__ = ["add_arguments", "COMMANDS"]


def add_arguments(sub) -> None:
    station = sub.add_parser(
        "checkpoint", help="a checkpoint station: verifies passes offline, records scans, serves its page"
    )
    station.add_argument(
        "--id",
        dest="ids",
        action="append",
        required=True,
        metavar="CHECKPOINT_ID",
        help="a checkpoint this station is (repeat for a few)",
    )
    station.add_argument("--port", type=int, default=8077, help="the page's port (0: any free one)")
    station.add_argument("--host", default="127.0.0.1", help="bind address (default loopback)")
    add_token_arguments(station, "GC_STATION_TOKEN")
    station.add_argument(
        "--public-key",
        action="append",
        type=Path,
        default=[],
        metavar="PATH",
        help="a public key file or a folder of *.pub (default: GC_KEY_DIR); repeat for several",
    )
    station.add_argument(
        "--root-public-key",
        type=Path,
        metavar="PEM",
        help="the pinned root public key the keys topic's records must be signed by (default: GC_ROOT_PUBLIC_KEY, "
        "else the development root, DATA_DIR/root/root.pub)",
    )
    station.add_argument("--clock", help="the station's time now, RFC 3339 (a replayed day, as in the demo)")


def cmd_checkpoint(settings, args) -> int:
    from models.records import parse_time

    from ..station.web import run_station

    clock = parse_time(args.clock) if args.clock else None
    if args.root_public_key is not None:
        settings = settings.model_copy(update={"root_public_key": args.root_public_key})
    return run_station(
        settings,
        args.ids,
        host=args.host,
        port=args.port,
        access=page_access(
            settings, args, settings.station_token, settings.station_token_file, "greenchannel checkpoint"
        ),
        key_paths=args.public_key or [settings.keys_path],
        clock_start=clock,
    )


COMMANDS = {"checkpoint": cmd_checkpoint}
