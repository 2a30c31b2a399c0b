"""`greenchannel demo`: the whole system on one machine with simulated firms and checkpoints (streams.dev.demo)."""

from __future__ import annotations

__all__ = ["add_arguments", "COMMANDS"]


def add_arguments(sub) -> None:
    demo = sub.add_parser("demo", help="broker, worker and a simulator of firms and checkpoints")
    demo.add_argument("--shipments", type=int, default=300)
    demo.add_argument("--seed", type=int, default=2020)
    demo.add_argument("--broker-url", help="use this broker instead of starting the embedded one")
    demo.add_argument(
        "--serve",
        action="store_true",
        help="after the report, keep the broker, worker, projector and pages running until Ctrl-C",
    )


def cmd_demo(settings, args) -> int:
    from ..dev.demo import run_demo

    return run_demo(settings, shipments=args.shipments, seed=args.seed, broker_url=args.broker_url, serve=args.serve)


COMMANDS = {"demo": cmd_demo}
