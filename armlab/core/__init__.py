"""The pure core: event schemas, experiment specs, variant configs, ingestion handlers,
allocation policies, sequential statistics and decisions as functions over per-arm sums.

Nothing here does I/O, reads the environment or the clock implicitly, or imports a database,
web, Kafka or torch library; everything is testable with plain values.
"""
