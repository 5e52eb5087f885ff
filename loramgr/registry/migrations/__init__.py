"""Alembic migrations of the loramgr registry, shipped inside the wheel so that an installed
loramgr can upgrade any database it opens."""
