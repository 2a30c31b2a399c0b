"""`greenchannel replay`: re-decide the logged inputs and prove every recorded decision (its options
are the audit's own)."""

from __future__ import annotations

__all__ = ["add_arguments", "COMMANDS"]


def add_arguments(sub) -> None:
    replay = sub.add_parser("replay", help="re-decide the logged inputs and prove every recorded decision")
    from ..replay import add_arguments as add_replay_arguments
    add_replay_arguments(replay)


def cmd_replay(settings, args) -> int:
    from ..replay import cmd_replay
    return cmd_replay(settings, args)


COMMANDS = {"replay": cmd_replay}
