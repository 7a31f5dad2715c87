"""The HTTP server: FastAPI app, auth, durable job store, worker."""
