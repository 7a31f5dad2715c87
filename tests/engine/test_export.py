"""Export: the .glb loads with UVs and an embedded texture of the configured size, geometry in the
prior's canonical frame, the baked texture matches the colour field, the OBJ set round-trips."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import trimesh
from mesh_test_support import SpherePrior, two_tone
from PIL import Image

from headsculpt_engine.config import ExportConfig, preset_config
from headsculpt_engine.errors import InputError
from headsculpt_engine.mesh.export import export_avatar
from headsculpt_engine.mesh.marching import marching_tets
from headsculpt_engine.mesh.tets import band_grid
from headsculpt_engine.mesh.uv import fill_gutters
from headsculpt_engine.stages.fine import FineResult


class TwoTone(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives FineResult a device to use

    def albedo(self, x):
        return two_tone(x)


def sphere_result(radius=0.45, res=32) -> FineResult:
    grid, sdf = band_grid(res, lambda p: p.norm(dim=-1) - radius, band_cells=2.0)
    vertices, faces = marching_tets(grid.vertices, sdf, grid.tets)
    return FineResult(vertices=vertices.detach(), faces=faces, colour=TwoTone())


def sample(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    size = texture.shape[0]
    cols = np.clip((uv[:, 0] * size).astype(int), 0, size - 1)
    rows = np.clip(((1.0 - uv[:, 1]) * size).astype(int), 0, size - 1)
    return texture[rows, cols, :3].astype(np.float32) / 255.0


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("result")
    prior = SpherePrior(radius=0.45)
    cfg = ExportConfig(texture_size=256, turntable_frames=4, turntable_resolution=48)
    result = sphere_result()
    files = export_avatar(result, prior, cfg, out, {"prompt": "a sphere", "seed": 3, "prior": {"hash": "abc"}})
    return out, files, prior, result


def test_written_files(exported):
    out, files, _, _ = exported
    names = {p.name for p in files}
    assert {"avatar.glb", "avatar.obj", "avatar.mtl", "avatar_albedo.png", "avatar.json", "turntable.gif",
            "turntable_00.png", "turntable_03.png"} <= names
    assert all(p.exists() and p.stat().st_size > 0 for p in files)
    gif = Image.open(out / "turntable.gif")
    assert gif.n_frames == 4 and gif.size == (48, 48)
    # The turntable shows the head: the front frame is not all background.
    frame = np.asarray(Image.open(out / "turntable_00.png"))
    assert (frame.min(axis=-1) < 200).mean() > 0.2
    info = json.loads((out / "avatar.json").read_text())
    assert info["prompt"] == "a sphere" and info["prior"]["hash"] == "abc"
    assert info["export"]["texture_size"] == 256 and "xatlas" in info["export"]["versions"]


def test_glb_has_uvs_texture_and_canonical_geometry(exported):
    out, _, prior, result = exported
    mesh = trimesh.load(out / "avatar.glb", force="mesh")
    assert mesh.visual.uv is not None and mesh.visual.uv.shape == (len(mesh.vertices), 2)
    image = mesh.visual.material.baseColorTexture
    assert image.size == (256, 256)
    canon_prior = prior.transform.to_canonical(prior.vertices.astype(np.float64))
    lo, hi = canon_prior.min(0), canon_prior.max(0)
    margin = 0.1 * (hi - lo) / 2
    assert np.all(mesh.vertices >= lo - margin) and np.all(mesh.vertices <= hi + margin)
    # Not left in the normalised frame: the canonical centre is far from the origin.
    assert np.allclose(mesh.vertices.mean(0), prior.transform.center, atol=0.01)
    # The texture under each vertex's UV is the colour field at that vertex.
    normalised = prior.transform.to_normalised(mesh.vertices)
    expected = two_tone(torch.tensor(normalised, dtype=torch.float32)).numpy()
    got = sample(np.asarray(image.convert("RGB")), mesh.visual.uv)
    assert np.median(np.abs(got - expected).max(axis=1)) < 0.05


def test_obj_set_round_trips(exported):
    out, _, _, _ = exported
    glb = trimesh.load(out / "avatar.glb", force="mesh")
    obj = trimesh.load(out / "avatar.obj", force="mesh", process=False)
    assert obj.faces.shape == glb.faces.shape
    assert np.allclose(obj.vertices, glb.vertices, atol=1e-5)
    assert np.allclose(obj.visual.uv, glb.visual.uv, atol=1e-5)
    assert obj.visual.material.image.size == (256, 256)
    # No black seams: every texel (gutters included) carries a colour from the field.
    texture = np.asarray(Image.open(out / "avatar_albedo.png").convert("RGB"))
    assert texture.max(axis=-1).min() > 100


def test_fill_gutters_uses_nearest_covered_texel():
    image = np.zeros((4, 4, 3), dtype=np.float32)
    covered = np.zeros((4, 4), dtype=bool)
    image[0, 0], covered[0, 0] = (1.0, 0.0, 0.0), True
    image[3, 3], covered[3, 3] = (0.0, 0.0, 1.0), True
    filled = fill_gutters(image, covered)
    assert tuple(filled[0, 1]) == (255, 0, 0) and tuple(filled[3, 2]) == (0, 0, 255)


def test_unknown_format_is_a_user_error(tmp_path):
    cfg = ExportConfig(texture_size=64, formats=("fbx",), turntable_frames=1, turntable_resolution=16)
    with pytest.raises(InputError):
        export_avatar(sphere_result(res=12), SpherePrior(), cfg, tmp_path, {})


def test_tiny_preset_export_is_fast(tmp_path):
    import time

    cfg = preset_config("tiny").export
    started = time.perf_counter()
    files = export_avatar(sphere_result(res=32), SpherePrior(), cfg, tmp_path, {"prompt": "tiny"})
    assert time.perf_counter() - started < 20.0
    assert (tmp_path / "avatar.glb") in files


def uv_overlap_ratio(mesh, size: int = 512) -> float:
    """Covered texels over the summed triangle areas in texels: 1 when no two triangles overlap."""
    from headsculpt_engine.mesh.raster import rasterize_uv

    tri, _ = rasterize_uv(torch.from_numpy(mesh.uvs), torch.from_numpy(mesh.faces), size)
    t = mesh.uvs[mesh.faces] * size
    area = 0.5 * np.abs(np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])).sum()
    return float((tri >= 0).sum()) / float(area)


def test_box_unwrap_gives_a_valid_atlas():
    from headsculpt_engine.mesh.uv import box_unwrap

    result = sphere_result(res=32)
    mesh = box_unwrap(result.vertices.numpy(), result.faces.numpy(), 512)
    assert mesh.method == "box"
    assert mesh.uvs.min() >= 0.0 and mesh.uvs.max() <= 1.0
    assert np.allclose(mesh.vertices, result.vertices.numpy()[mesh.source])
    assert mesh.faces.shape == result.faces.shape
    assert 0.97 < uv_overlap_ratio(mesh) < 1.03  # no overlapping charts
    # Each face keeps its corners' positions: the same triangles, only split along chart seams.
    assert np.allclose(mesh.vertices[mesh.faces], result.vertices.numpy()[result.faces.numpy()])


def test_unwrap_falls_back_when_xatlas_is_out_of_time():
    from headsculpt_engine.mesh.uv import unwrap

    result = sphere_result(res=32)
    v, f = result.vertices.numpy(), result.faces.numpy()
    assert unwrap(v, f, 256).method == "xatlas"
    late = unwrap(v, f, 256, timeout_s=0.0)
    assert late.method == "box" and late.faces.shape == f.shape


def test_unwrap_survives_an_xatlas_crash():
    # xatlas 0.0.11 segfaults on this regular 81,920-triangle sphere (exit code -11); without the
    # child process it would take the test process (or the server) down with it.
    from headsculpt_engine.mesh.uv import unwrap

    sphere = trimesh.creation.icosphere(subdivisions=6, radius=0.5)
    mesh = unwrap(sphere.vertices, sphere.faces, 1024, timeout_s=60.0)
    assert mesh.faces.shape == sphere.faces.shape
    assert mesh.uvs.min() >= 0.0 and mesh.uvs.max() <= 1.0
    assert 0.97 < uv_overlap_ratio(mesh, 1024) < 1.03


def test_mesh_benchmark_times_the_rasteriser_and_a_whole_export(capsys):
    """`python -m headsculpt_engine.mesh.benchmark` (docs/benchmarks.md) at a small size."""
    import re

    from headsculpt_engine.mesh.benchmark import main

    assert main(["raster", "export", "--tet-resolution", "24", "--texture", "128"]) == 0
    printed = capsys.readouterr().out
    raster = re.findall(r"^torch raster\+interpolate\+antialias (\d+) tris, (\d)x(\d+)\^2: ([\d.]+) s$", printed, re.M)
    assert [(int(t), int(b), int(s)) for t, b, s, _ in raster] == [(20480, 1, 512), (327680, 1, 128), (327680, 4, 64)]
    assert all(float(seconds) > 0 for *_, seconds in raster)
    export = re.search(r"^export (\d+) tris, analytic colour, 128\^2 texture, (\d+) files: ([\d.]+) s \((.*)\)$",
                       printed, re.M)
    assert export and int(export[1]) > 1000 and int(export[2]) >= 5 and float(export[3]) > 0
    assert "unwrap" in export[4] and "bake" in export[4]
