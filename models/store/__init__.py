"""Persistence of the projections: the SQLModel tables, database access and the Alembic migrations."""
