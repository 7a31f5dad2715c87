"""Meshes: tetrahedral grids, marching tetrahedra, rasterisation, UV unwrap, texture bake, export."""
