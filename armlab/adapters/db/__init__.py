"""PostgreSQL / SQLite: engine, ORM models, unit of work, migrations, queries, ingest store."""
