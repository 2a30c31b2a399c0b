"""`greenchannel dashboard`: the operators' live page."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_arguments", "add_token_arguments", "page_access", "COMMANDS"]


def add_arguments(sub) -> None:
    dashboard = sub.add_parser("dashboard", help="the operators' live page: map, checkpoints, flow, search")
    dashboard.add_argument("--host", default="127.0.0.1", help="bind address (default loopback)")
    dashboard.add_argument("--port", type=int, default=8080)
    add_token_arguments(dashboard, "GC_DASHBOARD_TOKEN")


def add_token_arguments(parser, variable: str) -> None:
    """--token-file, and a --token that refuses: a token on the command line is shown by `ps`."""
    parser.add_argument(
        "--token-file",
        type=Path,
        metavar="PATH",
        help=f"a file whose first line is the page's token (or {variable}_FILE, or {variable}); "
        "none: a token is made for this run and printed once with the URL",
    )
    parser.add_argument("--token", action=_RefuseToken, nargs="?", help=argparse.SUPPRESS, variable=variable)


class _RefuseToken(argparse.Action):
    def __init__(self, *args, variable: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.variable = variable

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        parser.error(
            f"--token is no longer taken: every user sees a command line (ps). Give the token in "
            f"{self.variable}, or in a file with --token-file PATH ({self.variable}_FILE)"
        )


def page_access(settings, args, token: str | None, token_file: Path | None, what: str):
    """The page's streams.web.Access: its token from --token-file, the *_FILE setting or the
    variable (else made now), its Host names from the bind address and GC_PAGE_HOSTS."""
    from ..web import Access, read_token

    configured = read_token(token, args.token_file or token_file, what)
    return Access.for_site(args.host, configured, settings.page_hosts)


def cmd_dashboard(settings, args) -> int:
    from ..dashboard import cmd_dashboard

    access = page_access(
        settings, args, settings.dashboard_token, settings.dashboard_token_file, "greenchannel dashboard"
    )
    return cmd_dashboard(settings, args, access)


COMMANDS = {"dashboard": cmd_dashboard}
