"""onestep service: FastAPI app with dynamic batching."""
