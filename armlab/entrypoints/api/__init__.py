"""HTTP API (FastAPI). Build it with :func:`armlab.entrypoints.api.app.create_app`."""
