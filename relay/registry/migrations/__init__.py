"""Alembic migrations of the relay registry (run by ``Registry.upgrade``)."""
