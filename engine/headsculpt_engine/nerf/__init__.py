"""Coarse-stage NeRF parts: encodings, fields, volume renderer, occupancy grid, background."""
