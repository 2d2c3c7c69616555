"""SQLAlchemy 2.0 async stores: PostgreSQL through asyncpg, SQLite through aiosqlite."""
