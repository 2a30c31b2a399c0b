"""`greenchannel dashboard`: the operators' live page."""

from __future__ import annotations

__all__ = ["add_arguments", "COMMANDS"]


def add_arguments(sub) -> None:
    dashboard = sub.add_parser("dashboard", help="the operators' live page: map, checkpoints, flow, search")
    dashboard.add_argument(
        "--host", default="127.0.0.1", help="bind address (default loopback; beyond it a token is required)"
    )
    dashboard.add_argument("--port", type=int, default=8080)
    dashboard.add_argument(
        "--token", help="required on every request when bound beyond loopback (default: GC_DASHBOARD_TOKEN)"
    )


def cmd_dashboard(settings, args) -> int:
    from ..dashboard import cmd_dashboard

    return cmd_dashboard(settings, args)


COMMANDS = {"dashboard": cmd_dashboard}
