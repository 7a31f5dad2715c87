"""Triangle rasterisation behind one interface: nvdiffrast on CUDA, a vectorised PyTorch fallback.

Both backends give the same outputs in the engine's pixel convention (row 0 at the top, pixel
centres at +0.5): per-pixel triangle id, perspective-correct barycentrics, view-axis depth, and an
antialiasing step that blends across silhouette edges by the edge's sub-pixel position, so that
images carry gradients with respect to vertex positions at silhouettes (as nvdiffrast's
`antialias` does).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ..errors import HeadSculptError

if TYPE_CHECKING:
    import torch

    from ..cameras import Cameras

Backend = Literal["auto", "torch", "nvdiffrast"]

# Candidate (triangle, pixel) pairs the torch backend tests at once; bounds its peak memory.
_CHUNK_CANDIDATES = 1 << 21


@dataclass
class RasterOutput:
    """What one rasterisation gives; every tensor is (B, H, W[, ...]) with row 0 at the top."""

    triangle_id: "torch.Tensor"  # int64, -1 = background
    barycentric: "torch.Tensor"  # (B, H, W, 3), perspective-correct, zero on background
    depth: "torch.Tensor"  # distance along the viewing axis, +inf on background
    mask: "torch.Tensor"  # bool, True where a triangle covers the pixel centre
    # Backend state needed by interpolate/antialias (screen positions or nvdiffrast's own buffers).
    backend_state: Any = None


def _as_batched(tensor: "torch.Tensor", batch: int) -> "torch.Tensor":
    return tensor.unsqueeze(0).expand(batch, *tensor.shape) if tensor.dim() == 2 else tensor


class Rasterizer(ABC):
    """Common interface; see `make_rasterizer`."""

    name = "base"

    @abstractmethod
    def rasterize(self, vertices: "torch.Tensor", faces: "torch.Tensor", cameras: "Cameras") -> RasterOutput:
        """Rasterise world-space vertices (V, 3) or (B, V, 3) with faces (F, 3) for every camera."""

    def interpolate(self, attributes: "torch.Tensor", raster: RasterOutput, faces: "torch.Tensor") -> "torch.Tensor":
        """Attributes (V, C) or (B, V, C) at every pixel, (B, H, W, C); zero on background."""
        import torch

        batch = raster.triangle_id.shape[0]
        attrs = _as_batched(attributes, batch)
        tri = raster.triangle_id.clamp_min(0)
        vids = faces.long()[tri]  # (B, H, W, 3)
        b_idx = torch.arange(batch, device=tri.device).view(-1, 1, 1, 1).expand_as(vids)
        corner = attrs[b_idx, vids]  # (B, H, W, 3, C)
        out = (raster.barycentric.unsqueeze(-1) * corner).sum(dim=-2)
        return out * raster.mask.unsqueeze(-1).to(out.dtype)

    @abstractmethod
    def antialias(self, image: "torch.Tensor", raster: RasterOutput, vertices: "torch.Tensor",
                  faces: "torch.Tensor", cameras: "Cameras") -> "torch.Tensor":
        """Blend (B, H, W, C) across silhouette edges; differentiable w.r.t. the vertex positions."""


# --------------------------------------------------------------------------------------------------
# PyTorch backend
# --------------------------------------------------------------------------------------------------


def _cross2(a: "torch.Tensor", b: "torch.Tensor") -> "torch.Tensor":
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _screen_barycentric(tri_xy: "torch.Tensor", p: "torch.Tensor") -> "torch.Tensor":
    """Screen-space (affine) barycentrics of points p (..., 2) in triangles tri_xy (..., 3, 2)."""
    import torch

    v0, v1, v2 = tri_xy[..., 0, :], tri_xy[..., 1, :], tri_xy[..., 2, :]
    area = _cross2(v1 - v0, v2 - v0)
    safe = torch.where(area.abs() > 1e-12, area, torch.full_like(area, 1e-12))
    l0 = _cross2(v1 - p, v2 - p) / safe
    l1 = _cross2(v2 - p, v0 - p) / safe
    return torch.stack([l0, l1, 1.0 - l0 - l1], dim=-1)


def _edge_coefficients(tri_xy: "torch.Tensor", tri_d: "torch.Tensor", x0: "torch.Tensor",
                       y0: "torch.Tensor") -> "torch.Tensor":
    """Per triangle (T, 12): barycentric k = a_k * i + b_k * j + c_k at the pixel centre (x0 + i + 0.5,
    y0 + j + 0.5) of its box, then 1 / depth of its corners. Set up once per triangle (relative to each
    edge's start, so float32 keeps its precision on small triangles far from the origin), the test
    of each candidate pixel is then a multiply-add per edge instead of a cross product."""
    import torch

    v0, v1, v2 = tri_xy[:, 0], tri_xy[:, 1], tri_xy[:, 2]
    area = _cross2(v1 - v0, v2 - v0)
    inv_area = 1.0 / area
    # Edge k is opposite corner k: lambda_k(p) = cross(v_{k+2} - v_{k+1}, p - v_{k+1}) / area.
    starts = torch.stack([v1, v2, v0], dim=1)  # (T, 3, 2)
    edges = torch.stack([v2 - v1, v0 - v2, v1 - v0], dim=1)
    origin = torch.stack([x0.to(tri_xy.dtype) + 0.5, y0.to(tri_xy.dtype) + 0.5], dim=-1)  # (T, 2)
    offset = origin.unsqueeze(1) - starts  # box origin relative to each edge's start
    a = -edges[..., 1] * inv_area.unsqueeze(1)
    b = edges[..., 0] * inv_area.unsqueeze(1)
    c = (edges[..., 0] * offset[..., 1] - edges[..., 1] * offset[..., 0]) * inv_area.unsqueeze(1)
    return torch.cat([a, b, c, 1.0 / tri_d], dim=1)


def nearest_triangle_keys(xy: "torch.Tensor", vdepth: "torch.Tensor", faces: "torch.Tensor", height: int,
                          width: int, near: float = 0.0, shown: "torch.Tensor | None" = None) -> "torch.Tensor":
    """The visible triangle at every pixel centre, from screen positions xy (B, V, 2) in pixels and
    view depths (B, V). Returns per pixel (flattened B*H*W) the int64 key (float32 depth bits << 32 |
    face index) of the nearest covering triangle; int64 max where none covers it. Triangles with a
    vertex at depth <= near are skipped, and where `shown` (B, F) bool is given, those it leaves out."""
    import torch

    batch = xy.shape[0]
    n_faces = faces.shape[0]
    dev = xy.device
    keys = torch.full((batch * height * width,), torch.iinfo(torch.int64).max, dtype=torch.int64, device=dev)
    tri_xy = xy[:, faces]  # (B, F, 3, 2)
    tri_d = vdepth[:, faces]  # (B, F, 3)
    lo = tri_xy.amin(dim=2)
    hi = tri_xy.amax(dim=2)
    # Pixel centres c = i + 0.5 inside [lo, hi]: i from ceil(lo - 0.5) to floor(hi - 0.5).
    x0 = torch.ceil(lo[..., 0] - 0.5).clamp(0, width).long()
    x1 = torch.floor(hi[..., 0] - 0.5).clamp(-1, width - 1).long()
    y0 = torch.ceil(lo[..., 1] - 0.5).clamp(0, height).long()
    y1 = torch.floor(hi[..., 1] - 0.5).clamp(-1, height - 1).long()
    bw = (x1 - x0 + 1).clamp_min(0)
    bh = (y1 - y0 + 1).clamp_min(0)
    area = _cross2(tri_xy[:, :, 1] - tri_xy[:, :, 0], tri_xy[:, :, 2] - tri_xy[:, :, 0])
    valid = (tri_d.amin(dim=2) > near) & (area.abs() > 1e-12) & torch.isfinite(area)
    if shown is not None:
        valid &= shown
    count = torch.where(valid, bw * bh, torch.zeros_like(bw)).reshape(-1)  # (B*F,)
    ids = torch.nonzero(count > 0).squeeze(1)
    if ids.numel() == 0:
        return keys
    counts = count[ids]
    ends = torch.cumsum(counts, 0)
    coeff = _edge_coefficients(tri_xy.reshape(-1, 3, 2)[ids], tri_d.reshape(-1, 3)[ids],
                               x0.reshape(-1)[ids], y0.reshape(-1)[ids])
    box_w = bw.reshape(-1)[ids]
    start = 0
    while start < ids.numel():
        base = int(ends[start - 1]) if start > 0 else 0
        stop = int(torch.searchsorted(ends, torch.tensor(base + _CHUNK_CANDIDATES, device=dev), right=True))
        stop = max(stop, start + 1)
        reps = counts[start:stop]
        owner = torch.repeat_interleave(torch.arange(start, stop, device=dev), reps)  # position in ids
        first = torch.cumsum(reps, 0) - reps
        local = torch.arange(int(reps.sum()), device=dev) - torch.repeat_interleave(first, reps)
        width_of = box_w[owner]
        lx, ly = local % width_of, local // width_of  # pixel offset inside the triangle's box
        c = coeff[owner]  # (N, 12): per edge a, b, c, then the corners' inverse depths
        lam = c[:, 0:3] * lx.unsqueeze(1).to(c.dtype) + c[:, 3:6] * ly.unsqueeze(1).to(c.dtype) + c[:, 6:9]
        inv_d = (lam * c[:, 9:12]).sum(dim=-1)
        inside = (lam >= 0).all(dim=-1) & (inv_d > 0)
        owner, lx, ly, inv_d = owner[inside], lx[inside], ly[inside], inv_d[inside]
        depth = (1.0 / inv_d).to(torch.float32)
        flat_id = ids[owner]
        b = flat_id // n_faces
        face = flat_id % n_faces
        # Positive float32 bit patterns sort like their values: pack depth above the face id.
        key = (depth.view(torch.int32).long() << 32) | face
        pix = (b * height + y0.reshape(-1)[flat_id] + ly) * width + x0.reshape(-1)[flat_id] + lx
        keys.scatter_reduce_(0, pix, key, reduce="amin")
        start = stop
    return keys


def rasterize_uv(uv: "torch.Tensor", faces: "torch.Tensor", size: int) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Rasterise a mesh in texture space: uv (V, 2) in [0, 1] (v up, as glTF/OBJ texture rows are
    flipped) onto a size x size image with row 0 at the top (v = 1). Returns the face index per texel
    (size, size) (-1 = gutter) and affine barycentrics (size, size, 3)."""
    import torch

    faces = faces.long()
    xy = torch.stack([uv[:, 0] * size, (1.0 - uv[:, 1]) * size], dim=-1).unsqueeze(0).float()
    keys = nearest_triangle_keys(xy, torch.ones_like(xy[..., 0]), faces, size, size)
    empty = keys == torch.iinfo(torch.int64).max
    tri = torch.where(empty, torch.full_like(keys, -1), keys & 0xFFFFFFFF).view(size, size)
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32) + 0.5,
                            torch.arange(size, dtype=torch.float32) + 0.5, indexing="ij")
    bary = _screen_barycentric(xy[0][faces[tri.clamp_min(0)]], torch.stack([xs, ys], dim=-1))
    return tri, bary * (tri >= 0).unsqueeze(-1)


@dataclass
class _TorchState:
    xy: "torch.Tensor"  # (B, V, 2) pixel positions of the vertices, differentiable


class TorchRasterizer(Rasterizer):
    """Vectorised rasteriser: per-triangle bounding boxes in chunks, nearest surface by scatter-min.

    Triangles with a vertex closer than the near plane are dropped (no clipping); both windings are
    drawn (no back-face culling), as nvdiffrast does.
    """

    name = "torch"

    def rasterize(self, vertices, faces, cameras, shown: "torch.Tensor | None" = None):
        """As `Rasterizer.rasterize`; `shown` (B, F) bool, this backend's own option, draws per view
        only the faces it marks (a caller's back-face culling)."""
        import torch

        batch, height, width = len(cameras), cameras.height, cameras.width
        faces = faces.long()
        xy, vdepth = cameras.project(vertices)  # (B, V, 2), (B, V)
        with torch.no_grad():
            key = nearest_triangle_keys(xy.detach(), vdepth.detach(), faces, height, width, cameras.near, shown)
        background = key == torch.iinfo(torch.int64).max
        tri = torch.where(background, torch.full_like(key, -1), key & 0xFFFFFFFF).view(batch, height, width)
        mask = ~background.view(batch, height, width)

        # Differentiable barycentrics and depth of the winning triangles at the pixel centres.
        ys, xs = torch.meshgrid(torch.arange(height, device=xy.device, dtype=xy.dtype) + 0.5,
                                torch.arange(width, device=xy.device, dtype=xy.dtype) + 0.5, indexing="ij")
        centres = torch.stack([xs, ys], dim=-1).expand(batch, -1, -1, -1)
        vids = faces[tri.clamp_min(0)]  # (B, H, W, 3)
        b_idx = torch.arange(batch, device=xy.device).view(-1, 1, 1, 1).expand_as(vids)
        lin = _screen_barycentric(xy[b_idx, vids], centres)  # (B, H, W, 3)
        inv_d = lin / vdepth[b_idx, vids]
        denom = inv_d.sum(dim=-1, keepdim=True)
        denom = torch.where(mask.unsqueeze(-1), denom, torch.ones_like(denom))
        bary = torch.where(mask.unsqueeze(-1), inv_d / denom, torch.zeros_like(inv_d))
        depth = torch.where(mask, 1.0 / denom.squeeze(-1), torch.full_like(denom.squeeze(-1), float("inf")))
        return RasterOutput(triangle_id=tri, barycentric=bary, depth=depth, mask=mask,
                            backend_state=_TorchState(xy=xy))

    def antialias(self, image, raster, vertices, faces, cameras):
        import torch

        state: _TorchState = raster.backend_state
        batch, height, width, channels = image.shape
        faces = faces.long()
        tri = raster.triangle_id
        depth = raster.depth
        flat = image.reshape(-1, channels)
        deltas, targets = [], []
        for axis in (1, 2):  # vertical neighbours (rows), horizontal neighbours (columns)
            n = tri.shape[axis]
            tri_a, tri_b = tri.narrow(axis, 0, n - 1), tri.narrow(axis, 1, n - 1)
            differ = tri_a != tri_b
            if not bool(differ.any()):
                continue
            bb, ii, jj = torch.nonzero(differ, as_tuple=True)
            # pixel p = (ii, jj) and its neighbour q one step further along `axis`
            pi, pj = ii, jj
            qi, qj = (ii + 1, jj) if axis == 1 else (ii, jj + 1)
            dp, dq = depth[bb, pi, pj], depth[bb, qi, qj]
            p_front = dp <= dq
            fi, fj = torch.where(p_front, pi, qi), torch.where(p_front, pj, qj)  # front (occluder) pixel
            oi, oj = torch.where(p_front, qi, pi), torch.where(p_front, qj, pj)  # other pixel
            t_front = tri[bb, fi, fj]
            t_other = tri[bb, oi, oj]
            corners = state.xy[bb.unsqueeze(-1), faces[t_front]]  # (K, 3, 2), differentiable
            c_front = torch.stack([fj, fi], dim=-1).to(corners.dtype) + 0.5
            c_other = torch.stack([oj, oi], dim=-1).to(corners.dtype) + 0.5
            lam_f = _screen_barycentric(corners, c_front)
            lam_o = _screen_barycentric(corners, c_other)
            # Where the segment front -> other leaves the front triangle: the first edge it crosses.
            leaving = lam_o < 0
            t_cross = lam_f / (lam_f - lam_o).where(leaving, torch.ones_like(lam_o))
            t_cross = torch.where(leaving, t_cross, torch.full_like(t_cross, float("inf")))
            t_edge, k = t_cross.min(dim=-1)
            ok = torch.isfinite(t_edge.detach())
            # Interior edges (the other pixel's triangle shares the crossed edge) are no silhouette.
            fv = faces[t_front]
            ea = fv.gather(1, ((k + 1) % 3).unsqueeze(1)).squeeze(1)
            eb = fv.gather(1, ((k + 2) % 3).unsqueeze(1)).squeeze(1)
            ov = faces[t_other.clamp_min(0)]
            shared = ((ov == ea.unsqueeze(1)).any(1) & (ov == eb.unsqueeze(1)).any(1)) & (t_other >= 0)
            ok &= ~shared
            if not bool(ok.any()):
                continue
            t_edge = t_edge[ok].clamp(0.0, 1.0)
            bb, fi, fj, oi, oj = bb[ok], fi[ok], fj[ok], oi[ok], oj[ok]
            f_lin = (bb * height + fi) * width + fj
            o_lin = (bb * height + oi) * width + oj
            col_f, col_o = flat[f_lin], flat[o_lin]
            # Edge at t in [0, 1] from the front centre; pixel boundary at 0.5.
            spill = (t_edge - 0.5).clamp_min(0.0).unsqueeze(-1)  # front surface covering the other pixel
            short = (0.5 - t_edge).clamp_min(0.0).unsqueeze(-1)  # front pixel not fully covered
            deltas += [spill * (col_f - col_o), short * (col_o - col_f)]
            targets += [o_lin, f_lin]
        if not deltas:
            return image
        out = flat.index_add(0, torch.cat(targets), torch.cat(deltas))
        return out.view(batch, height, width, channels)


# --------------------------------------------------------------------------------------------------
# nvdiffrast backend (CUDA only)
# --------------------------------------------------------------------------------------------------


@dataclass
class _NvState:
    rast: "torch.Tensor"  # nvdiffrast's (B, H, W, 4) buffer, row 0 at the bottom
    clip: "torch.Tensor"  # (B, V, 4) clip-space positions
    faces: "torch.Tensor"  # (F, 3) int32


class NvdiffrastRasterizer(Rasterizer):
    """nvdiffrast's CUDA rasteriser; its images have row 0 at the bottom, flipped here to y-down."""

    name = "nvdiffrast"

    def __init__(self, device) -> None:
        import nvdiffrast.torch as dr

        self._dr = dr
        self._ctx = dr.RasterizeCudaContext(device=device)

    @staticmethod
    def _clip(vertices, cameras):
        import torch

        verts = _as_batched(vertices, len(cameras)).float()
        homo = torch.cat([verts, torch.ones_like(verts[..., :1])], dim=-1)
        return (homo @ cameras.mvp().float().transpose(1, 2)).contiguous()

    def rasterize(self, vertices, faces, cameras):
        import torch

        dr = self._dr
        clip = self._clip(vertices, cameras)
        tri32 = faces.int().contiguous()
        rast, _ = dr.rasterize(self._ctx, clip, tri32, resolution=[cameras.height, cameras.width])
        vdepth = clip[..., 3:4].contiguous()  # w = view-axis depth
        depth_img, _ = dr.interpolate(vdepth, rast, tri32)
        tri = rast[..., 3].long() - 1
        mask = tri >= 0
        u, v = rast[..., 0], rast[..., 1]
        bary = torch.stack([u, v, 1.0 - u - v], dim=-1) * mask.unsqueeze(-1)
        depth = torch.where(mask, depth_img[..., 0], torch.full_like(depth_img[..., 0], float("inf")))
        return RasterOutput(triangle_id=tri.flip(1), barycentric=bary.flip(1), depth=depth.flip(1),
                            mask=mask.flip(1), backend_state=_NvState(rast=rast, clip=clip, faces=tri32))

    def interpolate(self, attributes, raster, faces):
        state: _NvState = raster.backend_state
        out, _ = self._dr.interpolate(attributes.float().contiguous(), state.rast, state.faces)
        return out.flip(1)

    def antialias(self, image, raster, vertices, faces, cameras):
        state: _NvState = raster.backend_state
        native = image.flip(1).contiguous()
        return self._dr.antialias(native, state.rast, state.clip, state.faces).flip(1)


def nvdiffrast_available(device) -> bool:
    """True when the device is CUDA and nvdiffrast imports."""
    import torch

    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return False
    try:
        import nvdiffrast.torch  # noqa: F401
    except ImportError:
        return False
    return True


def make_rasterizer(device, backend: Backend = "auto") -> Rasterizer:
    """nvdiffrast when asked for (or on "auto" when it imports on CUDA), else the torch rasteriser."""
    if backend == "torch":
        return TorchRasterizer()
    if backend == "nvdiffrast":
        if not nvdiffrast_available(device):
            raise HeadSculptError("The nvdiffrast rasteriser needs a CUDA device with nvdiffrast installed; "
                                  "use the torch rasteriser instead.")
        return NvdiffrastRasterizer(device)
    if backend != "auto":
        raise HeadSculptError(f"Unknown rasteriser {backend!r}: choose auto, torch or nvdiffrast.")
    return NvdiffrastRasterizer(device) if nvdiffrast_available(device) else TorchRasterizer()
