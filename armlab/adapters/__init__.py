"""Adapters to the outside world: the database (SQLAlchemy, Alembic), Kafka and the
in-process bus, torch/transformers scoring, data files, Prometheus metrics and the HTTP client.

Adapters depend on ``armlab.core`` and ``armlab.settings``, never on services or entry points.
"""
