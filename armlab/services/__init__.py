"""Use cases: the registry life cycle, results, sequential decisions, the allocator,
assignment, catalogs, recommendation, ingestion, off-policy evaluation, offline quality.

Services work inside a caller's unit of work (they flush, never commit) and raise
``armlab.errors``; they know nothing of HTTP or the command line.
"""
