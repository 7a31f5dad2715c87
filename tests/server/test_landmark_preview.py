"""The landmark contact sheet: four shaded views side by side, landmark map pixels drawn on top."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import trimesh

from headsculpt_engine.server.landmark_preview import BACKGROUND, VIEWS, landmark_contact_sheet


@dataclass
class SpherePrior:
    """A unit-free stand-in for HeadPrior: a sphere of radius 0.5, and a landmark map that is one
    red square in the middle of every view."""

    vertices: np.ndarray
    faces: np.ndarray

    def landmark_maps(self, cameras, policy="none"):
        maps = torch.zeros(len(cameras), 3, cameras.height, cameras.width)
        c = cameras.height // 2
        maps[:, 0, c - 2:c + 2, c - 2:c + 2] = 1.0
        return maps


def test_contact_sheet_shades_the_mesh_and_draws_the_landmarks():
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    prior = SpherePrior(np.asarray(sphere.vertices, np.float32), np.asarray(sphere.faces, np.int32))
    size = 64
    sheet = np.asarray(landmark_contact_sheet(prior, size=size)).astype(float) / 255
    assert sheet.shape == (size, len(VIEWS) * size, 3)
    for view in range(len(VIEWS)):
        tile = sheet[:, view * size:(view + 1) * size]
        assert np.allclose(tile[0, 0], BACKGROUND, atol=1 / 255)  # corner: background
        assert np.allclose(tile[size // 2, size // 2], (1, 0, 0), atol=1 / 255)  # the landmark square
        # Just off the square: the sphere seen head-on, so |cos| is close to 1 and the grey is bright.
        grey = tile[size // 2, size // 2 + 6]
        assert np.allclose(grey, grey[0]) and 0.8 < grey[0] <= 0.9 + 1 / 255
        # The rim of the sphere is seen at grazing angles: darker than the middle.
        row = tile[size // 2, :, 1]
        lit = np.flatnonzero(row > BACKGROUND + 0.02)
        assert row[lit[0]] < grey[1] - 0.1 and row[lit[-1]] < grey[1] - 0.1
