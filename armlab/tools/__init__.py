"""Developer tools shipped with armlab: the local PostgreSQL + Kafka stack, benchmarks
with their load generators, synthetic event streams. Not used by the serving path."""
