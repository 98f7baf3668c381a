"""A NeRF field for text-to-3D: hash-grid encoding, a density head with a blob bias, an albedo head.

The field follows DreamFusion (Poole et al. 2022, Sec. 3.1) as implemented with Instant-NGP
encodings by Magic3D and threestudio: density = exp(raw + blob bias - 1) (threestudio's
"shifted_trunc_exp": the exponential's gradient is clamped) with the Magic3D blob bias
``blob_density * (1 - |x| / blob_radius)`` that starts the optimization from a ball at the centre;
albedo = sigmoid(raw); normals are the normalized negative density gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dreamsmith.representations.configs import NeRFConfig
from dreamsmith.representations.hashgrid import HashGrid, TorchHashGrid


class _TruncExp(torch.autograd.Function):
    """exp(x) whose backward uses exp(min(x, 15)) (Instant-NGP's trick against exploding gradients)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(max=15.0))


def density_activation(raw: Tensor) -> Tensor:
    """threestudio's shifted truncated exponential: exp(raw - 1)."""
    return _TruncExp.apply(raw - 1.0)


def mlp(in_dim: int, out_dim: int, hidden_dim: int, hidden_layers: int) -> nn.Sequential:
    """A ReLU MLP without output activation."""
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(hidden_layers):
        layers += [nn.Linear(width, hidden_dim), nn.ReLU(inplace=True)]
        width = hidden_dim
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


class NeRFField(nn.Module):
    """Density and albedo of points in the world frame."""

    def __init__(self, config: NeRFConfig, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.config = config
        self.encoding = HashGrid(config.hash_grid, device=device, backend=config.backend)
        if isinstance(self.encoding.grid, TorchHashGrid) and config.normals == "analytic":
            self.encoding.grid.fused_position_gradients = False  # trained through a second derivative
        self.density_head = mlp(self.encoding.n_output_dims, 1, config.hidden_dim, config.hidden_layers)
        self.albedo_head = mlp(self.encoding.n_output_dims, 3, config.hidden_dim, config.hidden_layers)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by learning-rate group: the hash tables and the MLPs; without ``optimize_geometry`` the
        albedo head alone (the hash tables feed the density too)."""
        if not self.config.optimize_geometry:
            return {"mlp": list(self.albedo_head.parameters())}
        return {
            "encoding": list(self.encoding.parameters()),
            "mlp": list(self.density_head.parameters()) + list(self.albedo_head.parameters()),
        }

    def bytes_per_point(self) -> int:
        """Bytes one point's evaluation holds at its peak: the encoding's temporaries and both heads'
        activations (float32)."""
        heads = 2 * self.config.hidden_dim * self.config.hidden_layers + 4
        return self.encoding.bytes_per_point() + 4 * (self.encoding.n_output_dims + 2 * heads)

    def set_step(self, step: int) -> None:
        """Progressive hash-grid levels."""
        self.encoding.set_step(step)

    def normalize(self, points: Tensor) -> Tensor:
        """World points ``[N, 3]`` -> the encoding's unit cube."""
        return (points / self.config.bound + 1.0) * 0.5

    def blob_bias(self, points: Tensor) -> Tensor:
        """Magic3D's density bias ``[N]``: positive inside the blob radius, negative outside (with its own
        slope there when ``blob_outer_density`` is set)."""
        config = self.config
        line = 1.0 - points.norm(dim=-1) / config.blob_radius
        outer = config.blob_density if config.blob_outer_density is None else config.blob_outer_density
        return torch.where(line > 0, config.blob_density * line, outer * line)

    def _features(self, points: Tensor) -> Tensor:
        return self.encoding(self.normalize(points))

    def density(self, points: Tensor) -> Tensor:
        """Volume density ``[N]`` (per metre) at world points ``[N, 3]``."""
        features = self._features(points)
        return density_activation(self.density_head(features)[..., 0] + self.blob_bias(points))

    def albedo(self, points: Tensor) -> Tensor:
        """Albedo ``[N, 3]`` in [0, 1] at world points ``[N, 3]``."""
        return self(points)[1]

    def forward(self, points: Tensor, with_normals: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(density [N], albedo [N, 3], normal [N, 3] or None)`` at world points ``[N, 3]``.

        Normals are the normalized negative density gradient; while gradients are enabled they are
        differentiable, so shaded renders and the orientation regularizer train the geometry.
        """
        features = self._features(points)
        density = density_activation(self.density_head(features)[..., 0] + self.blob_bias(points))
        albedo = torch.sigmoid(self.albedo_head(features))
        normal = None
        if with_normals:
            gradient = self.density_gradient(points, density)
            normal = -nn.functional.normalize(gradient, dim=-1, eps=1e-8)
        return density, albedo, normal

    def density_gradient(self, points: Tensor, density: Tensor) -> Tensor:
        """Spatial gradient ``[N, 3]`` of the density at ``points`` (``density`` is their density)."""
        if self.config.normals == "finite_difference":
            eps = self.config.normal_eps
            offsets = torch.eye(3).to(points) * eps
            grad = torch.is_grad_enabled() and self.config.normal_gradients
            with torch.set_grad_enabled(grad):
                shifted = self.density((points[:, None] + offsets).reshape(-1, 3)).view(-1, 3)
                centre = density if grad else density.detach()
                return (shifted - centre[:, None]) / eps
        if self.config.normals != "analytic":
            raise ValueError(f"normals must be finite_difference or analytic, not {self.config.normals!r}")
        training = torch.is_grad_enabled() and self.config.normal_gradients
        with torch.enable_grad():
            if not points.requires_grad:
                points = points.detach().requires_grad_(True)
                density = self.density(points)
            return torch.autograd.grad(density.sum(), points, create_graph=training)[0]
