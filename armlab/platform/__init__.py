"""Registry, HTTP API, admin CLI, local stack. Always imported as ``armlab.platform``."""
