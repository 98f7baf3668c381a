"""A stage's DMTet: a textured surface seen through the mesh rasterizer (Magic3D's fine stage).

Magic3D (Lin et al. 2023, Sec. 4.2) refines the coarse NeRF as a textured mesh: a DMTet whose SDF
starts at the NeRF density's level set, and a texture field that starts as the NeRF's albedo. The
texture field here is a ``NeRFField`` of which only the albedo head is used, so it is the previous
stage's field copied as is; the exported asset is the DMTet surface itself.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from dreamsmith.engine.config import ExportConfig, StageConfig
from dreamsmith.engine.losses import dmtet_regularizer_losses
from dreamsmith.engine.stages.nerf import NeRFRepresentation
from dreamsmith.errors import DreamsmithError
from dreamsmith.exporters.isosurface import remove_small_components
from dreamsmith.renderers.cameras import Cameras
from dreamsmith.renderers.mesh_renderer import MeshRenderer
from dreamsmith.renderers.outputs import RenderOutput
from dreamsmith.representations.background import Background
from dreamsmith.representations.chunked import evaluate_in_chunks
from dreamsmith.representations.dmtet import DMTet, max_over_cell, sphere_sdf
from dreamsmith.representations.marching_tets import marching_tets
from dreamsmith.representations.mesh import Mesh
from dreamsmith.representations.nerf import NeRFField
from dreamsmith.representations.tets import cavities, tet_grid_edges


class DMTetRepresentation:
    """A ``DMTet`` surface coloured by a texture field (``NeRFField.albedo``), over a ``Background``.

    A DMTet stage that starts a run begins from a sphere of half the NeRF blob radius; after a NeRF
    stage it begins from that NeRF (:meth:`init_from`).
    """

    def __init__(self, config: StageConfig, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.dmtet = DMTet(config.dmtet).to(device)
        self.texture = NeRFField(config.nerf, device=device).to(device)
        self.texture.encoding.level_mask.fill_(1.0)  # no progressive levels: the texture is already trained
        self.background = Background(config.background).to(device)
        # one source for the lights of a stage: its shading section
        self.renderer = MeshRenderer(
            replace(config.mesh_renderer, ambient=config.shading.ambient, diffuse=config.shading.diffuse)
        )
        grid = self.dmtet.grid_vertices
        self.boundary = (grid.abs() >= config.dmtet.bound * (1 - 1e-6)).any(-1)
        self.edges = tet_grid_edges(config.dmtet.resolution, device)
        self.surface_of_last_render: tuple[Tensor, Tensor] | None = None
        self.dmtet.init_from_sdf(sphere_sdf(0.5 * config.nerf.blob_radius))

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by learning-rate group: ``geometry`` (SDF, deformation) and the texture field's."""
        geometry = [p for p in (self.dmtet.sdf, self.dmtet.deformation) if p.requires_grad]
        groups = {
            "geometry": geometry,
            "encoding": list(self.texture.encoding.parameters()),
            "mlp": list(self.texture.albedo_head.parameters()),
        }
        if self.config.background.kind == "mlp":
            groups["background"] = list(self.background.parameters())
        return groups

    def set_step(self, step: int) -> None:
        """Nothing changes with the step (the texture uses every hash-grid level)."""

    def surface(self) -> tuple[Tensor, Tensor]:
        """The DMTet surface: vertices ``[V, 3]`` (differentiable) and outward faces ``[F, 3]``.

        Grid-boundary vertices count as outside, so the surface stays closed even where the SDF
        would leave the grid; cavities count as inside: no render sees them, so nothing else would
        remove the bubbles an expanding surface leaves behind.
        """
        sdf = torch.where(self.boundary, self.dmtet.sdf.clamp(min=0.0), self.dmtet.sdf)
        cavity = cavities(sdf.detach() >= 0, self.config.dmtet.resolution)
        sdf = torch.where(cavity, -0.5 * self.dmtet.cell_size, sdf)
        return marching_tets(self.dmtet.vertices(), self.dmtet.tets, sdf)

    def render(
        self,
        cameras: Cameras,
        shading: str,
        light_dir: Tensor | None,
        background_color: Tensor | None,
        generator: torch.Generator | None,
        need_normals: bool,
    ) -> RenderOutput:
        """A training render; the surface is kept for :meth:`regularizers`.

        Normals are always rendered (``need_normals`` is for volume renderers); ``generator`` is unused:
        rasterization has no random samples.
        """
        vertices, faces = self.surface()
        if faces.shape[0] == 0:
            raise DreamsmithError(
                f"the DMTet surface of stage '{self.config.name}' vanished: nothing left to render. "
                "Look at previews/; try a lower lr_geometry or guidance scale"
            )
        self.surface_of_last_render = (vertices, faces)
        return self._render(vertices, faces, cameras, shading, light_dir, background_color)

    def _render(
        self,
        vertices: Tensor,
        faces: Tensor,
        cameras: Cameras,
        shading: str,
        light_dir: Tensor | None,
        background_color: Tensor | None,
    ) -> RenderOutput:
        return self.renderer(
            vertices,
            faces,
            cameras,
            albedo=self.texture.albedo,
            shading=shading,
            light_dir=light_dir,
            background=lambda directions: self.background(directions, background_color),
        )

    @torch.no_grad()
    def render_previews(self, cameras: Cameras, shading: str) -> RenderOutput:
        """Renders of ``cameras``, headlight."""
        vertices, faces = self.surface()
        return self._render(vertices, faces, cameras, shading, None, None)

    def regularizers(self, render: RenderOutput, step: int) -> dict[str, Tensor]:
        """Weighted regularizers of the DMTet: its SDF, and the surface the last render saw."""
        if self.surface_of_last_render is None:
            raise RuntimeError("regularizers() needs a render() first")
        vertices, faces = self.surface_of_last_render
        return dmtet_regularizer_losses(vertices, faces, self.dmtet.sdf, self.edges, self.config.loss, step)

    def albedo(self, points: Tensor) -> Tensor:
        """The texture field's albedo at ``points [N, 3]``."""
        return self.texture.albedo(points.to(self.device))

    def state_dict(self) -> dict[str, Any]:
        return {
            "dmtet": self.dmtet.state_dict(),
            "texture": self.texture.state_dict(),
            "background": self.background.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dmtet.load_state_dict(state["dmtet"])
        self.texture.load_state_dict(state["texture"])
        self.background.load_state_dict(state["background"])

    @torch.no_grad()
    def init_from(self, previous: Any, export: ExportConfig) -> None:
        """Continue from the previous stage.

        From a NeRF: the SDF from its density at its surface threshold (the level its own export
        would extract), the density taken as its maximum around each grid vertex so that
        shells thinner than a cell are not missed (their inside then fills as a cavity), and the
        texture field is its field; from a DMTet: its parameters. The background is carried over
        when both stages configure the same one.
        """
        if isinstance(previous, NeRFRepresentation):
            field, chunk = previous.field, previous.chunk_points
            density = max_over_cell(lambda points: evaluate_in_chunks(field.density, points, chunk),
                                    self.dmtet.cell_size)
            self.dmtet.init_from_density(density, threshold=previous.surface_threshold(export))
            self.texture.load_state_dict(previous.field.state_dict())
        elif isinstance(previous, DMTetRepresentation):
            self.dmtet.load_state_dict(previous.dmtet.state_dict())
            self.texture.load_state_dict(previous.texture.state_dict())
        else:
            raise DreamsmithError(f"a dmtet stage cannot start from a {type(previous).__name__}")
        if previous.config.background == self.config.background:
            self.background.load_state_dict(previous.background.state_dict())

    @torch.no_grad()
    def export_mesh(self, export: ExportConfig) -> Mesh:
        """The DMTet surface, floaters removed, vertex colours from the texture field."""
        vertices, faces = self.surface()
        mesh = remove_small_components(
            Mesh(vertices.cpu().numpy(), faces.cpu().numpy()), export.keep_components_fraction
        )
        if mesh.n_faces == 0:
            raise DreamsmithError(
                f"the DMTet of stage '{self.config.name}' has no surface: nothing to export. Look at previews/"
            )
        colors = self.albedo(torch.from_numpy(mesh.vertices))
        return mesh.copy(vertex_colors=colors.clamp(0.0, 1.0).float().cpu().numpy())
