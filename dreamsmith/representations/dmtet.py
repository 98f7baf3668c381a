"""DMTet: a deformable tetrahedral grid carrying an SDF (Shen et al. 2021; Magic3D's fine stage).

The surface is the zero level set of a per-vertex SDF on a tet grid whose vertices may each move by
a bounded offset, extracted by differentiable marching tetrahedra: the loss on renders of the mesh
reaches the SDF values and the offsets.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from dreamsmith.representations.configs import DMTetConfig

from .marching_tets import marching_tets
from .tets import tet_grid

PointFunction = Callable[[Tensor], Tensor]


class DMTet(torch.nn.Module):
    """Per-vertex SDF (``sdf < 0`` inside) and bounded deformation on a tet grid.

    Parameters: ``sdf [N]`` and ``deformation [N, 3]`` (pre-tanh); buffers: ``grid_vertices [N, 3]``,
    ``tets [T, 4]``.
    """

    def __init__(self, config: DMTetConfig | None = None) -> None:
        super().__init__()
        self.config = config or DMTetConfig()
        grid_vertices, tets = tet_grid(self.config.resolution, self.config.bound)
        self.register_buffer("grid_vertices", grid_vertices)
        self.register_buffer("tets", tets)
        self.sdf = torch.nn.Parameter(torch.zeros(grid_vertices.shape[0]), requires_grad=self.config.optimize_geometry)
        self.deformation = torch.nn.Parameter(
            torch.zeros_like(grid_vertices),
            requires_grad=self.config.optimize_deformation and self.config.optimize_geometry,
        )

    @property
    def cell_size(self) -> float:
        """Edge length of one grid cell in metres."""
        return 2.0 * self.config.bound / self.config.resolution

    def vertices(self) -> Tensor:
        """Deformed grid vertices ``[N, 3]``: each moves at most ``deformation_scale`` cells per axis."""
        offset = torch.tanh(self.deformation) * (self.cell_size * self.config.deformation_scale)
        return self.grid_vertices + offset

    def extract(self) -> tuple[Tensor, Tensor]:
        """The surface: vertices ``[V, 3]`` (differentiable) and outward faces ``[F, 3]`` int64."""
        return marching_tets(self.vertices(), self.tets, self.sdf)

    @torch.no_grad()
    def _evaluate(self, fn: PointFunction) -> Tensor:
        points = self.grid_vertices
        values = [fn(chunk).reshape(-1) for chunk in points.split(self.config.eval_chunk)]
        return torch.cat(values).to(self.sdf)

    @torch.no_grad()
    def init_from_sdf(self, fn: PointFunction) -> None:
        """Set the SDF to ``fn(points [N, 3]) -> sdf [N]`` (negative inside) and zero the deformation."""
        self.sdf.copy_(self._evaluate(fn))
        self.deformation.zero_()

    @torch.no_grad()
    def init_from_density(self, fn: PointFunction, threshold: float) -> None:
        """Initialize from a NeRF density field ``fn(points [N, 3]) -> density [N]`` (Magic3D stage 2).

        The surface is the level set ``density = threshold``: ``sdf = (threshold - density) * k``.
        A positive constant ``k`` leaves the zero crossings (hence the mesh) unchanged; it is chosen
        so that the median ``|sdf|`` at the corners of tets the surface crosses is half a cell, which
        makes the values metre-like near the surface instead of the density's arbitrary scale (so the
        learning rates of the fine stage do not depend on the NeRF's density scale).
        """
        raw = threshold - self._evaluate(fn)
        tet_values = raw[self.tets]
        crossing = (tet_values.min(1).values < 0) & (tet_values.max(1).values >= 0)
        near = raw[self.tets[crossing].unique()].abs()
        scale = 0.5 * self.cell_size / near.median().clamp(min=1e-12) if near.numel() else 1.0
        self.sdf.copy_(raw * scale)
        self.deformation.zero_()

    @torch.no_grad()
    def init_from_mesh(self, vertices: Tensor | np.ndarray, faces: Tensor | np.ndarray) -> None:
        """Set the SDF to the signed distance to a closed mesh (Open3D, negative inside)."""
        import open3d as o3d

        scene = o3d.t.geometry.RaycastingScene()
        scene.add_triangles(
            o3d.core.Tensor(np.asarray(_numpy(vertices), dtype=np.float32)),
            o3d.core.Tensor(np.asarray(_numpy(faces), dtype=np.uint32)),
        )

        def signed_distance(points: Tensor) -> Tensor:
            query = o3d.core.Tensor(points.detach().cpu().numpy().astype(np.float32))
            return torch.from_numpy(scene.compute_signed_distance(query).numpy())

        self.init_from_sdf(signed_distance)


def _numpy(array: Tensor | np.ndarray) -> np.ndarray:
    return array.detach().cpu().numpy() if isinstance(array, Tensor) else np.asarray(array)


def sphere_sdf(radius: float, center: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> PointFunction:
    """Exact SDF of a sphere: ``|p - center| - radius``."""
    centre = torch.tensor(center)

    def sdf(points: Tensor) -> Tensor:
        return (points - centre.to(points)).norm(dim=-1) - radius

    return sdf


def ellipsoid_sdf(radii: tuple[float, float, float]) -> PointFunction:
    """An ellipsoid's SDF up to a positive factor near the surface: ``(|p / radii| - 1) * min(radii)``.

    Same zero set and sign as the exact SDF (which has no closed form); exact for a sphere.
    """
    axes = torch.tensor(radii)

    def sdf(points: Tensor) -> Tensor:
        return ((points / axes.to(points)).norm(dim=-1) - 1.0) * float(axes.min())

    return sdf


def max_over_cell(density: PointFunction, cell_size: float, samples_per_axis: int = 3) -> PointFunction:
    """``points [N, 3] -> [N]``: the largest ``density`` on a ``samples_per_axis``^3 lattice spanning
    one cell centred on each point (a NeRF's surface can be a shell thinner than the grid's cells)."""
    steps = torch.linspace(-0.5, 0.5, samples_per_axis) * cell_size
    offsets = torch.stack(torch.meshgrid(steps, steps, steps, indexing="ij"), dim=-1).reshape(-1, 3)

    def pooled(points: Tensor) -> Tensor:
        shifted = points[:, None] + offsets.to(points)
        return density(shifted.reshape(-1, 3)).view(points.shape[0], -1).amax(dim=1)

    return pooled
