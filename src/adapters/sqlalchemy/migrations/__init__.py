"""Alembic migrations for the SQL stores."""
