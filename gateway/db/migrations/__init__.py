"""Alembic migrations of the gateway schema (gateway/db/migrate.py runs them)."""
