"""The files a user imports: a textured mesh in the prior's canonical frame (glTF binary and
OBJ+MTL+PNG), a JSON description beside it, and turntable previews (PNG frames and a GIF)."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError

if TYPE_CHECKING:
    from ..config import ExportConfig
    from ..stages.fine import FineResult

STEM = "avatar"
FORMATS = ("glb", "obj")
_TURNTABLE_BATCH = 4


def export_avatar(fine_result: "FineResult", prior, cfg: "ExportConfig", out_dir: Path,
                  description: dict[str, Any]) -> list[Path]:
    """Clean (mesh/hygiene.py), unwrap, bake and write the avatar into `out_dir`; returns the written files.

    Geometry is written in the prior's canonical frame (`prior.transform.to_canonical`), so that it
    sits exactly on the prior mesh the user started from.
    """
    from PIL import Image

    from .hygiene import clean_mesh, is_watertight
    from .uv import bake_texture, unwrap

    unknown = set(cfg.formats) - set(FORMATS)
    if unknown:
        raise InputError(f"Unknown export format(s) {', '.join(sorted(unknown))}: choose from {', '.join(FORMATS)}.")
    if fine_result.faces.shape[0] == 0:
        raise InputError("The fine stage produced an empty mesh; there is nothing to export.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = now - clock
        clock = now

    vertices = fine_result.vertices.detach().cpu().numpy().astype(np.float32)
    faces = fine_result.faces.detach().cpu().numpy().astype(np.int64)
    clean = clean_mesh(vertices, faces, cfg.target_faces, cfg.min_component_share,
                       expect_watertight=is_watertight(prior.vertices, prior.faces),
                       to_prior_units=lambda points: prior.transform.to_canonical(points.astype(np.float64)))
    lap("clean_s")
    mesh = unwrap(clean.vertices, clean.faces, cfg.texture_size, timeout_s=cfg.unwrap_timeout_s)
    lap("unwrap_s")
    texture = Image.fromarray(bake_texture(mesh, fine_result.albedo, cfg.texture_size))
    lap("bake_s")
    canonical = np.asarray(prior.transform.to_canonical(mesh.vertices.astype(np.float64)), dtype=np.float32)

    written = []
    texture_path = out_dir / f"{STEM}_albedo.png"
    texture.save(texture_path)
    written.append(texture_path)
    rig = prior.rig
    if "glb" in cfg.formats and rig is not None:
        from .rig_transfer import transfer, write_rigged_glb

        write_rigged_glb(out_dir / f"{STEM}.glb", canonical, mesh.faces, mesh.uvs, texture, rig,
                         *transfer(rig, canonical))
        written.append(out_dir / f"{STEM}.glb")
    elif "glb" in cfg.formats:
        written.append(_write_glb(out_dir / f"{STEM}.glb", canonical, mesh.faces, mesh.uvs, texture))
    if "obj" in cfg.formats:
        written += _write_obj(out_dir, canonical, mesh.faces, mesh.uvs, texture_path.name)
    lap("write_s")
    written += write_turntable(fine_result, cfg, out_dir)
    lap("turntable_s")

    info = dict(description)
    info["export"] = {
        "frame": "prior canonical (normalisation undone)",
        "vertices": int(canonical.shape[0]), "faces": int(mesh.faces.shape[0]),
        "texture_size": int(cfg.texture_size), "formats": list(cfg.formats), "unwrap": mesh.method,
        "bounds_min": canonical.min(axis=0).tolist(), "bounds_max": canonical.max(axis=0).tolist(),
        "mesh": clean.report, "rig": _rig_summary(rig), "timings": timings, "versions": _versions(),
    }
    json_path = out_dir / f"{STEM}.json"
    json_path.write_text(json.dumps(info, indent=2, default=str))
    written.append(json_path)
    return written


def _write_glb(path: Path, vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray, texture) -> Path:
    import trimesh
    from trimesh.visual.material import PBRMaterial
    from trimesh.visual.texture import TextureVisuals

    material = PBRMaterial(name=STEM, baseColorTexture=texture, metallicFactor=0.0, roughnessFactor=1.0)
    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, visual=TextureVisuals(uv=uvs, material=material),
                           process=False)
    path.write_bytes(mesh.export(file_type="glb"))
    return path


def _write_obj(out_dir: Path, vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray,
               texture_name: str) -> list[Path]:
    """OBJ with one texture coordinate per vertex (seams already split), and its MTL."""
    obj_path, mtl_path = out_dir / f"{STEM}.obj", out_dir / f"{STEM}.mtl"
    mtl_path.write_text(f"newmtl {STEM}\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nd 1\nillum 1\nmap_Kd {texture_name}\n")
    with obj_path.open("w") as fh:
        fh.write(f"# HeadSculpt avatar\nmtllib {mtl_path.name}\no {STEM}\n")
        np.savetxt(fh, vertices, fmt="v %.6f %.6f %.6f")
        np.savetxt(fh, uvs, fmt="vt %.6f %.6f")
        fh.write(f"usemtl {STEM}\n")
        one = faces + 1
        np.savetxt(fh, np.repeat(one, 2, axis=1), fmt="f %d/%d %d/%d %d/%d")
    return [obj_path, mtl_path]


def write_turntable(fine_result: "FineResult", cfg: "ExportConfig", out_dir: Path) -> list[Path]:
    """`turntable_NN.png` frames around the head (lit albedo) and `turntable.gif` of them."""
    import torch
    from PIL import Image

    from ..cameras import turntable_cameras
    from .raster import make_rasterizer
    from .render import render_mesh

    size, count = cfg.turntable_resolution, cfg.turntable_frames
    cameras = turntable_cameras(count, size)
    rasterizer = make_rasterizer("cpu", "torch")
    frames = []
    with torch.no_grad():
        for start in range(0, count, _TURNTABLE_BATCH):
            images, _ = render_mesh(rasterizer, fine_result.vertices, fine_result.faces,
                                    cameras[list(range(start, min(start + _TURNTABLE_BATCH, count)))],
                                    fine_result.albedo, "lambertian", ambient=0.4)
            frames += [(img.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8) for img in images]
    paths = []
    pictures = [Image.fromarray(frame) for frame in frames]
    for i, picture in enumerate(pictures):
        path = out_dir / f"turntable_{i:02d}.png"
        picture.save(path)
        paths.append(path)
    gif = out_dir / "turntable.gif"
    pictures[0].save(gif, save_all=True, append_images=pictures[1:], duration=int(4000 / max(count, 1)), loop=0)
    return paths + [gif]


def _rig_summary(rig) -> dict[str, Any] | None:
    """What of the prior's rig avatar.glb carries (None: a plain textured mesh)."""
    if rig is None:
        return None
    return {"joints": [node.get("name", "") for node in rig.nodes], "morph_targets": list(rig.target_names)}


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in ("trimesh", "xatlas", "fast-simplification", "libigl", "pygltflib", "numpy", "pillow", "torch"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out
