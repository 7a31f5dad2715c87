"""The head prior: mesh loading and validation, canonical frame, signed distance, density prior, landmarks."""
