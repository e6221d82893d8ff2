"""HTTP API (FastAPI). Build it with :func:`armlab.platform.api.app.create_app`."""
