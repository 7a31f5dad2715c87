"""Diffusion models: loading by id or folder (offline by default), tiny random models, text embeddings."""
