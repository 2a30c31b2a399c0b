"""`greenchannel gateway` (the firms' HTTP API) and `greenchannel firms` (operators register firms)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

__all__ = ["add_arguments", "COMMANDS"]

_CODE = re.compile(r"^[0-9A-HJ-NPQRTUWXY]{2}[0-9]{6}[0-9A-HJ-NPQRTUWXY]{10}$")


def add_arguments(sub) -> None:
    gateway = sub.add_parser("gateway", help="the firms' HTTP API: apply, follow and print passes (OpenAPI at /docs)")
    gateway.add_argument("--host", default="127.0.0.1", help="bind address (default loopback)")
    gateway.add_argument("--port", type=int, default=8090)
    firms = sub.add_parser("firms", help="operators: the firms of the gateway, their shippers and API keys")
    cmd = firms.add_subparsers(dest="firms_command", required=True)
    add = cmd.add_parser("add", help="register a firm (its own credit code is one it may act for)")
    add.add_argument("firm_id", help="a short id: lower-case letters, digits, hyphens (e.g. sf-wuhan)")
    add.add_argument("--name", required=True)
    add.add_argument("--credit-code", required=True, help="the firm's own unified social credit code")
    add.add_argument(
        "--acts-for", action="append", default=[], metavar="CODE", help="a shipper it carries for (repeat)"
    )
    add.add_argument("--per-minute", type=int, default=600, help="requests a minute at most (default 600)")
    acts = cmd.add_parser("acts-for", help="add shippers a firm carries for")
    acts.add_argument("firm_id")
    acts.add_argument("codes", nargs="+", metavar="CODE")
    cmd.add_parser("list", help="the firms, their shippers and keys")
    key = cmd.add_parser("key", help="API keys").add_subparsers(dest="key_command", required=True)
    new = key.add_parser("new", help="a new API key for a firm, printed once (only its hash is kept)")
    new.add_argument("firm_id")
    revoke = key.add_parser("revoke", help="revoke an API key at once")
    revoke.add_argument("key_id")
    hook = cmd.add_parser("webhook", help="set a firm's webhook URL (a new signing secret, printed once)")
    hook.add_argument("firm_id")
    hook.add_argument("url", nargs="?", help="https://… (none: remove the webhook)")


def _session(settings):
    from sqlmodel import Session

    from models.store.db import init_db, make_engine

    engine = make_engine(settings.database_url)
    init_db(engine)
    return Session(engine)


def cmd_firms(settings, args) -> int:
    from models.firms import FIRM_ID
    from models.store import firms as rows

    now = datetime.now(UTC)
    with _session(settings) as s:
        if args.firms_command == "add":
            bad = [c for c in (args.credit_code, *args.acts_for) if not _CODE.match(c)]
            if not FIRM_ID.match(args.firm_id) or bad:
                print(f"greenchannel firms: not valid: {args.firm_id if not bad else ', '.join(bad)}")
                return 2
            try:
                firm = rows.create_firm(
                    s,
                    firm_id=args.firm_id,
                    name=args.name,
                    credit_code=args.credit_code,
                    acts_for=args.acts_for,
                    requests_per_minute=args.per_minute,
                    now=now,
                )
            except rows.FirmExists as exc:
                print(f"greenchannel firms: {exc}")
                return 1
            print(f"firm {firm.firm_id} ({firm.name}) acts for {', '.join(firm.acts_for)}")
            return 0
        return _firms_other(s, args, now)


def _firms_other(s, args, now) -> int:
    from models.store import firms as rows

    if args.firms_command == "acts-for":
        firm = rows.add_acts_for(s, firm_id=args.firm_id, codes=args.codes)
        return _done(firm, args.firm_id, lambda f: f"firm {f.firm_id} acts for {', '.join(f.acts_for)}")
    if args.firms_command == "list":
        keys = rows.list_keys(s)
        for f in rows.list_firms(s):
            mine = [k.key_id + (" (revoked)" if k.revoked_at else "") for k in keys if k.firm_id == f.firm_id]
            print(f"{f.firm_id}\t{f.name}\tacts for {', '.join(f.acts_for)}\tkeys {', '.join(mine) or '-'}")
        return 0
    if args.firms_command == "webhook":
        from models.firms import webhook_url_refusal

        if args.url is not None and (refusal := webhook_url_refusal(args.url)) is not None:
            print(f"greenchannel firms: {refusal}")
            return 2
        found = rows.set_webhook(s, firm_id=args.firm_id, url=args.url)
        return _done(found, args.firm_id, lambda f: f"webhook {f[0].webhook_url}; signing secret (shown once): {f[1]}")
    if args.key_command == "new":
        key = rows.create_key(s, firm_id=args.firm_id, now=now)
        return _done(key, args.firm_id, lambda k: f"API key of {args.firm_id} (shown once, keep it secret):\n{k.text}")
    row = rows.revoke_key(s, key_id=args.key_id, now=now)
    return _done(row, args.key_id, lambda r: f"key {r.key_id} of {r.firm_id} revoked at {r.revoked_at}")


def _done(found, name: str, say) -> int:
    if found is None:
        print(f"greenchannel firms: no {name}")
        return 1
    print(say(found))
    return 0


def cmd_gateway(settings, args) -> int:
    from ..gateway.serve import serve

    return serve(settings, host=args.host, port=args.port)


COMMANDS = {"gateway": cmd_gateway, "firms": cmd_firms}
