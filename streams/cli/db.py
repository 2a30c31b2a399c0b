"""`greenchannel db upgrade`: bring the database schema up to date."""

from __future__ import annotations

__all__ = ["add_arguments", "COMMANDS"]


def add_arguments(sub) -> None:
    db = sub.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="bring the schema at GC_DATABASE_URL up to date")


def cmd_db(settings, args) -> int:
    from sqlalchemy.engine import make_url

    from models.store.db import upgrade

    upgrade(settings.database_url)  # alembic upgrade head, under the migration lock
    print(f"schema up to date at {make_url(settings.database_url).render_as_string(hide_password=True)}")
    return 0


COMMANDS = {"db": cmd_db}
