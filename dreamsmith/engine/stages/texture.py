"""A stage's texture: fixed geometry coloured by a UV texture, seen through the mesh rasterizer.

TEXTure (Richardson et al. 2023) and Text2Tex (Chen et al. 2023) paint a given mesh through its UV
atlas; here the atlas is optimized directly by the stage's guidance (SDS, VSD, ...). The geometry is
a user's mesh (``uv_texture.mesh``, its own UVs kept) or the previous stage's DMTet surface (unwrapped),
and never moves: the export writes its positions, indices and UVs back exactly.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dreamsmith.engine.config import ExportConfig, StageConfig
from dreamsmith.engine.mesh_input import load_fixed_mesh
from dreamsmith.engine.stages.dmtet import DMTetRepresentation
from dreamsmith.errors import DreamsmithError
from dreamsmith.exporters.bake import sample_texture
from dreamsmith.renderers.cameras import Cameras
from dreamsmith.renderers.mesh_renderer import MeshRenderer
from dreamsmith.renderers.outputs import RenderOutput
from dreamsmith.representations.background import Background
from dreamsmith.representations.mesh import Mesh
from dreamsmith.representations.uv_texture import UVTexture


class TextureRepresentation:
    """A fixed ``Mesh`` with UVs, a learnable ``UVTexture`` and a ``Background``."""

    def __init__(self, config: StageConfig, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.texture = UVTexture(config.uv_texture.texture_size, config.uv_texture.init_color).to(device)
        self.background = Background(config.background).to(device)
        self.renderer = MeshRenderer(
            replace(config.mesh_renderer, ambient=config.shading.ambient, diffuse=config.shading.diffuse)
        )
        # read on first use, so that a checkpoint's geometry (load_state_dict) needs no mesh file
        self.mesh: Mesh | None = None
        self.frozen: Tensor | None = None
        self.texture.logits.register_hook(self._frozen_gradient)

    def freeze(self, frozen: Tensor) -> None:
        """Keep the texels where ``frozen [S, S]`` (bool) is true as they are: their gradient is zero, so
        Adam never moves them (a try-on's projected texels while guidance fills the rest)."""
        self.frozen = frozen.to(device=self.device, dtype=torch.bool)

    def _frozen_gradient(self, gradient: Tensor) -> Tensor:
        return gradient if self.frozen is None else gradient.masked_fill(self.frozen.unsqueeze(-1), 0.0)

    def _set_mesh(self, mesh: Mesh) -> None:
        """Hold ``mesh`` (unwrapped first when it has no UVs) and its tensors on the device."""
        if mesh.uvs is None:
            from dreamsmith.exporters.uv import unwrap

            mesh = unwrap(mesh, self.config.uv_texture.texture_size)
        self.mesh = mesh
        self.vertices = torch.from_numpy(mesh.vertices).to(self.device)
        self.faces = torch.from_numpy(mesh.faces).to(self.device)
        self.uvs = torch.from_numpy(np.asarray(mesh.uvs, dtype=np.float32)).to(self.device)

    def geometry(self) -> Mesh:
        """The fixed mesh as painted: read on first use, unwrapped when it has no UVs."""
        return self._geometry()

    def _geometry(self) -> Mesh:
        if self.mesh is None and self.config.uv_texture.mesh is not None:
            self._set_mesh(load_fixed_mesh(self.config.uv_texture.mesh, self.config.uv_texture.max_faces))
        if self.mesh is None:
            raise DreamsmithError(f"texture stage '{self.config.name}' has no geometry: set uv_texture.mesh "
                                  "or put it after a dmtet stage")
        return self.mesh

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The texels (``lr_texture``) and a learned background's parameters."""
        groups = {"texture": [self.texture.logits]}
        if self.config.background.kind == "mlp":
            groups["background"] = list(self.background.parameters())
        return groups

    def set_step(self, step: int) -> None:
        """Nothing changes with the step."""

    def render(self, cameras: Cameras, shading: str, light_dir: Tensor | None, background_color: Tensor | None,
               generator: torch.Generator | None, need_normals: bool) -> RenderOutput:
        """A training render (rasterization has no random samples; normals are always rendered)."""
        self._geometry()  # reads the mesh file on the first render
        return self.renderer(self.vertices, self.faces, cameras, albedo=self.texture, shading=shading,
                             light_dir=light_dir, uvs=self.uvs,
                             background=lambda directions: self.background(directions, background_color))

    @torch.no_grad()
    def render_previews(self, cameras: Cameras, shading: str) -> RenderOutput:
        """Renders of ``cameras``, headlight."""
        return self.render(cameras, shading, None, None, None, need_normals=True)

    def regularizers(self, render: RenderOutput, step: int) -> dict[str, Tensor]:
        """None: the geometry is fixed and the texels are bounded by their sigmoid."""
        return {}

    @torch.no_grad()
    def albedo(self, points: Tensor) -> Tensor:
        """The texture at the mesh vertex nearest each of ``points [N, 3]`` (export keeps the atlas itself)."""
        mesh = self._geometry()
        from scipy.spatial import cKDTree

        _, nearest = cKDTree(mesh.vertices).query(points.detach().cpu().numpy())
        image = self.texture.image().cpu().numpy()
        colors = sample_texture(image, mesh.uvs[nearest])
        return torch.from_numpy(colors.astype(np.float32)).to(points.device)

    def state_dict(self) -> dict[str, Any]:
        mesh = self._geometry()
        return {
            "texture": self.texture.state_dict(),
            "background": self.background.state_dict(),
            # tensors, as checkpoints load weights-only; float32 and int64 round-trip the arrays exactly
            "geometry": {name: torch.from_numpy(getattr(mesh, name).copy()) for name in ("vertices", "faces", "uvs")},
            **({} if self.frozen is None else {"frozen": self.frozen.cpu()}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.texture.load_state_dict(state["texture"])
        self.background.load_state_dict(state["background"])
        self._set_mesh(Mesh(**{name: value.numpy() for name, value in state["geometry"].items()}))
        if "frozen" in state:
            self.freeze(state["frozen"])

    @torch.no_grad()
    def init_from(self, previous: Any, export: ExportConfig) -> None:
        """Without ``uv_texture.mesh``, texture the previous DMTet's surface (as its export extracts it,
        unwrapped), starting from its texture field's albedo; the background is carried over when both
        stages configure the same one."""
        if self.config.uv_texture.mesh is None:
            if not isinstance(previous, DMTetRepresentation):
                raise DreamsmithError(f"a texture stage without uv_texture.mesh cannot start from a "
                                      f"{type(previous).__name__}; put it after a dmtet stage")
            self._set_mesh(previous.export_mesh(export).copy(vertex_colors=None))
            self._fit_texture(previous.albedo)
        if previous.config.background == self.config.background:
            self.background.load_state_dict(previous.background.state_dict())

    @torch.no_grad()
    def paint_from(self, source: Mesh) -> None:
        """Start the texels from a mesh's own colours (``source``, as read): its base-colour texture resized to
        the atlas when the stage kept the mesh's UVs, else its colours per vertex (from the texture at the
        vertices' UVs, or its vertex colours) baked through the nearest vertex."""
        from dreamsmith.exporters.bake import vertex_color_albedo

        mesh = self._geometry()
        texture = source.base_color_texture
        if texture is not None and source.uvs is not None and np.array_equal(mesh.uvs, source.uvs):
            size = self.config.uv_texture.texture_size
            image = torch.from_numpy(np.ascontiguousarray(texture, dtype=np.float32)).permute(2, 0, 1)[None]
            image = torch.nn.functional.interpolate(image, size=(size, size), mode="bilinear", antialias=True,
                                                    align_corners=False)[0].permute(1, 2, 0)
            self.texture.logits.copy_(torch.logit(image.clamp(1e-4, 1 - 1e-4)).to(self.device))
            return
        if texture is not None and source.uvs is not None:
            source = source.copy(vertex_colors=sample_texture(texture, source.uvs).astype(np.float32))
        if source.vertex_colors is None:
            raise DreamsmithError("the mesh has neither vertex colours nor a texture to start from")
        self._fit_texture(vertex_color_albedo(source))

    def _fit_texture(self, albedo: Any) -> None:
        """Start the texels from ``albedo`` baked into this stage's atlas."""
        from dreamsmith.exporters.bake import bake

        size = self.config.uv_texture.texture_size
        image = np.clip(bake(self._geometry(), albedo, size), 1e-4, 1 - 1e-4)
        self.texture.logits.copy_(torch.logit(torch.from_numpy(image.astype(np.float32))).to(self.device))

    @torch.no_grad()
    def export_mesh(self, export: ExportConfig) -> Mesh:
        """The fixed mesh as read, with the optimized texture as its base colour."""
        mesh = self._geometry()
        return mesh.copy(vertex_colors=None, base_color_texture=self.texture.image().cpu().numpy())
