"""`greenchannel risk|enterprises|keys` (the operators') and `request` (the firms'): their parsers and
handlers live beside their code, in streams.operators and streams.firms."""

from __future__ import annotations

__all__ = ["add_arguments", "COMMANDS"]


def add_arguments(sub) -> None:
    from ..firms import add_arguments as add_request_arguments
    from ..operators import add_arguments as add_operator_arguments

    add_operator_arguments(sub)
    add_request_arguments(sub)


def cmd_risk(settings, args) -> int:
    from ..operators import cmd_risk

    return cmd_risk(settings, args)


def cmd_enterprises(settings, args) -> int:
    from ..operators import cmd_enterprises

    return cmd_enterprises(settings, args)


def cmd_keys(settings, args) -> int:
    from ..operators import cmd_keys

    return cmd_keys(settings, args)


def cmd_request(settings, args) -> int:
    from ..firms import cmd_request

    return cmd_request(settings, args)


COMMANDS = {"risk": cmd_risk, "enterprises": cmd_enterprises, "keys": cmd_keys, "request": cmd_request}
