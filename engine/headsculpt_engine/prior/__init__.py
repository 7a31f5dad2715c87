"""The head prior: mesh loading and validation, canonical frame, signed distance, density prior, landmarks.

Import-light: numpy only; torch, libigl, mediapipe and the rasteriser load when first used.
"""
from .builtin import builtin_prior
from .frame import PriorTransform
from .head import HeadPrior, load_prior
from .landmarks import LandmarkEmbedding
from .meshio import MeshArrays

__all__ = ["HeadPrior", "builtin_prior", "LandmarkEmbedding", "MeshArrays", "PriorTransform", "load_prior"]
