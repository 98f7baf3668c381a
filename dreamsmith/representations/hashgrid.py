"""Multiresolution hash-grid encoding (Instant-NGP, Mueller et al. 2022, Sec. 3).

Two implementations of the same math: a pure PyTorch one (always available, the tested path) and an
adapter for tiny-cuda-nn used when it is installed and the encoding lives on a CUDA device.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from dreamsmith.representations.configs import HashGridConfig

# Instant-NGP's spatial hash primes (pi_1 = 1 keeps the x dimension coherent in memory).
_PRIMES = (1, 2654435761, 805459861)


def level_resolutions(config: HashGridConfig) -> list[int]:
    """Grid resolution of each level, as tiny-cuda-nn computes it."""
    return [
        int(math.floor(config.base_resolution * config.per_level_scale**level)) for level in range(config.n_levels)
    ]


def corner_indices(cell: Tensor, resolution: Tensor, table_size: int) -> Tensor:
    """Table index of the 8 corners of each point's cell.

    cell: ``[L, N, 3]`` integer lower corners; resolution: ``[L]``. Returns ``[L, N, 8]`` with the
    corner order (x, y, z) = bits (2, 1, 0) of the corner number. Levels whose dense grid fits in the
    table are indexed densely (no collisions), the others by the spatial hash (low bits, like the
    uint32 arithmetic of tiny-cuda-nn).
    """
    side = (resolution + 1).view(-1, 1, 1, 1, 1)
    upper = torch.minimum(cell + 1, resolution.view(-1, 1, 1))
    axes = torch.stack([cell, upper], dim=-1)  # [L, N, 3, 2]: per axis the two corner coordinates
    x, y, z = axes[:, :, 0], axes[:, :, 1], axes[:, :, 2]  # each [L, N, 2]
    dense = x[..., :, None, None] + side * (y[..., None, :, None] + side * z[..., None, None, :])
    hashed = torch.bitwise_xor(
        torch.bitwise_xor(x[..., :, None, None] * _PRIMES[0], y[..., None, :, None] * _PRIMES[1]),
        z[..., None, None, :] * _PRIMES[2],
    ).bitwise_and(table_size - 1)
    fits = ((resolution + 1) ** 3 <= table_size).view(-1, 1, 1, 1, 1)
    return torch.where(fits, dense, hashed).flatten(-3)


def corner_weights(frac: Tensor) -> Tensor:
    """Trilinear weights ``[L, N, 8]`` of the 8 corners (same order as ``corner_indices``)."""
    pairs = torch.stack([1.0 - frac, frac], dim=-1)  # [L, N, 3, 2]
    wx, wy, wz = pairs[:, :, 0], pairs[:, :, 1], pairs[:, :, 2]
    return (wx[..., :, None, None] * wy[..., None, :, None] * wz[..., None, None, :]).flatten(-3)


_ROW_DTYPES = {1: torch.float32, 2: torch.complex64}
"""Element types as wide as a table row of 1 or 2 float32 features: a row is gathered, and its
gradient scattered, as one element (complex addition adds both features); 1-D gathers and scatters
are several times faster than 2-D ones on the CPU."""


def _level_corners(
    positions: Tensor, resolution: int, table_size: int, derivatives: bool = False
) -> Iterator[tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor] | None]]:
    """For one level, per corner (same order as ``corner_indices``) its table index ``[N]``, trilinear
    weight ``[N]`` and, with ``derivatives``, the weight's partial derivatives along x, y and z (each
    ``[N]``): the math of ``corner_indices``/``corner_weights`` one corner at a time, so nothing of size
    ``[N, 8]`` is ever held. A level whose dense grid fits in the table is indexed densely
    (``x + side * (y + side * z)``, no collisions), the others by the spatial hash. Each axis's
    coordinate term and weight, and the (y, z) combinations, are computed once and shared by the corners."""
    scaled = positions * resolution
    cell = scaled.floor()
    frac = scaled - cell
    lower = cell.long()
    upper = torch.clamp(lower + 1, max=resolution)
    dense = (resolution + 1) ** 3 <= table_size
    strides = (1, resolution + 1, (resolution + 1) ** 2) if dense else _PRIMES
    combine = torch.add if dense else torch.bitwise_xor
    terms = [(lower[:, axis] * strides[axis], upper[:, axis] * strides[axis]) for axis in range(3)]
    weights = [(1.0 - frac[:, axis], frac[:, axis]) for axis in range(3)]
    slope = (-float(resolution), float(resolution))  # d weight / d position of the lower, upper corner
    pairs = {(by, bz): (combine(terms[1][by], terms[2][bz]), weights[1][by] * weights[2][bz])
             for by in (0, 1) for bz in (0, 1)}
    for corner in range(8):
        bx, by, bz = (corner >> 2) & 1, (corner >> 1) & 1, corner & 1
        yz_index, yz_weight = pairs[by, bz]
        index = combine(terms[0][bx], yz_index)
        if not dense:
            index.bitwise_and_(table_size - 1)
        partials = None
        if derivatives:
            wx, wy, wz = weights[0][bx], weights[1][by], weights[2][bz]
            partials = (slope[bx] * yz_weight, wx * slope[by] * wz, wx * wy * slope[bz])
        yield index, weights[0][bx] * yz_weight, partials


def _row_dtype(table: Tensor) -> torch.dtype | None:
    """The one-element row type of a float32 ``[..., F]`` CPU table, or None (rows as 2-D: other
    devices, where complex scatters are not guaranteed)."""
    if table.dtype != torch.float32 or table.device.type != "cpu":
        return None
    return _ROW_DTYPES.get(table.shape[-1])


def _gather_rows(table: Tensor, index: Tensor) -> Tensor:
    """``table[index]`` ``[N, F]`` for a contiguous ``[T, F]`` table."""
    row_dtype = _row_dtype(table)
    if row_dtype is None:
        return table.index_select(0, index)
    return table.view(row_dtype).view(-1).index_select(0, index).view(torch.float32).view(-1, table.shape[1])


def _scatter_rows(grad_table: Tensor, index: Tensor, rows: Tensor) -> None:
    """``grad_table[index] += rows`` (repeated indices accumulate) for contiguous ``[T, F]``/``[N, F]``."""
    row_dtype = _row_dtype(grad_table)
    if row_dtype is None:
        grad_table.index_add_(0, index, rows)
        return
    grad_table.view(row_dtype).view(-1).index_add_(0, index, rows.contiguous().view(row_dtype).view(-1))


def _level_backward(positions: Tensor, rows: Tensor, resolution: int, table_size: int, grad: Tensor,
                    grad_rows: Tensor | None, grad_positions: Tensor | None) -> None:
    """One level's backward, corner by corner: ``grad [N, F]`` (the level's output gradient) scattered
    into ``grad_rows [T, F]`` and, when given, the positions' gradient (the features ``rows`` times the
    weights' derivatives) added into ``grad_positions [N, 3]``."""
    need_positions = grad_positions is not None
    for index, weight, partials in _level_corners(positions, resolution, table_size, derivatives=need_positions):
        if grad_rows is not None:
            _scatter_rows(grad_rows, index, grad * weight[:, None])
        if need_positions:
            along = (grad * _gather_rows(rows, index)).sum(-1)
            for axis in range(3):
                grad_positions[:, axis].addcmul_(along, partials[axis])


def _refuse_second_derivative() -> None:
    if torch.is_grad_enabled():  # create_graph: a second derivative would silently miss this part
        raise RuntimeError("the fused hash grid is differentiable once; set fused_position_gradients=False "
                           "on the TorchHashGrid for second derivatives")


class _FusedLevels(torch.autograd.Function):
    """The hashed levels (one table size) as one autograd function that keeps only the positions:
    forward accumulates corner by corner, backward recomputes each corner's index and weight, scatters
    the gradient into the tables and, when the positions need one, accumulates theirs (the features
    times the weights' derivatives). Differentiable once: a second derivative (analytic normals
    trained through their own gradient) takes the reference path
    (``TorchHashGrid.fused_position_gradients``)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, positions: Tensor, tables: Tensor,
                resolutions: list[int]) -> Tensor:
        ctx.save_for_backward(positions, tables)
        ctx.resolutions = resolutions
        n_levels, table_size, n_features = tables.shape
        out = positions.new_empty(positions.shape[0], n_levels, n_features)
        for level, resolution in enumerate(resolutions):
            table = tables[level].contiguous()
            accumulated = torch.zeros(positions.shape[0], n_features, dtype=positions.dtype, device=positions.device)
            for index, weight, _ in _level_corners(positions, resolution, table_size):
                accumulated.addcmul_(_gather_rows(table, index), weight[:, None])
            out[:, level] = accumulated
        return out.view(positions.shape[0], n_levels * n_features)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        _refuse_second_derivative()
        positions, tables = ctx.saved_tensors
        need_positions, need_tables = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        n_levels, table_size, n_features = tables.shape
        grad = grad.reshape(positions.shape[0], n_levels, n_features)
        grad_tables = grad.new_zeros(tables.shape) if need_tables else None
        grad_positions = torch.zeros_like(positions) if need_positions else None
        for level, resolution in enumerate(ctx.resolutions):
            _level_backward(positions, tables[level].contiguous(), resolution, table_size, grad[:, level],
                            None if grad_tables is None else grad_tables[level], grad_positions)
        return grad_positions, grad_tables, None


class _DenseLevel(torch.autograd.Function):
    """One dense level ``[1, F, R+1, R+1, R+1]`` (z, y, x; ``grid_sample``'s layout): forward by
    ``grid_sample`` (the fastest trilinear forward on a CPU), backward corner by corner like the
    hashed levels (rows in the dense order ``x + side * (y + side * z)``; about twice as fast as
    ``grid_sample``'s own backward). Differentiable once, like ``_FusedLevels``."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, positions: Tensor, table: Tensor,
                resolution: int) -> Tensor:
        ctx.save_for_backward(positions, table)
        ctx.resolution = resolution
        return _grid_sample_level(table, positions)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        _refuse_second_derivative()
        positions, table = ctx.saved_tensors
        need_positions, need_table = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        n_features = table.shape[1]
        rows = table[0].reshape(n_features, -1).t().contiguous() if need_positions else table
        grad_rows = grad.new_zeros(table[0, 0].numel(), n_features) if need_table else None
        grad_positions = torch.zeros_like(positions) if need_positions else None
        _level_backward(positions, rows, ctx.resolution, table[0, 0].numel(), grad.contiguous(), grad_rows,
                        grad_positions)
        grad_table = None if grad_rows is None else grad_rows.t().reshape(table.shape)
        return grad_positions, grad_table, None


def _grid_sample_level(table: Tensor, positions: Tensor) -> Tensor:
    """Trilinear interpolation ``[N, F]`` of a dense level ``[1, F, R+1, R+1, R+1]`` at ``positions``
    ``[N, 3]`` in [0, 1] (``align_corners``: position 1 is the last grid point)."""
    grid = (positions * 2.0 - 1.0).view(1, positions.shape[0], 1, 1, 3)
    sampled = nn.functional.grid_sample(table, grid, mode="bilinear", align_corners=True)
    return sampled.view(table.shape[1], positions.shape[0]).t()


class TorchHashGrid(nn.Module):
    """Pure PyTorch hash grid: ``positions [N, 3] in [0, 1] -> features [N, L * F]``.

    Levels whose dense grid fits in a table are stored densely (``grid_sample``'s layout); the finer
    levels use the spatial hash. The hashed levels run corner by corner in ``_FusedLevels`` (memory
    ``O(N)`` per level, nothing saved for backward but the positions); the dense levels are
    interpolated by ``grid_sample`` (a fused trilinear kernel, the same math) with the corner-by-corner
    backward (``_DenseLevel``). ``fused=False`` forces the reference path (``grid_sample``'s own
    backward and ``[L, N, 8]`` tensors);
    so do positions that need a gradient when ``fused_position_gradients`` is False (a NeRF with
    analytic normals, whose training differentiates the encoding twice).
    """

    def __init__(self, config: HashGridConfig, fused: bool = True) -> None:
        super().__init__()
        self.config = config
        self.fused = fused
        self.fused_position_gradients = True
        self.table_size = 2**config.log2_hashmap_size
        resolutions = level_resolutions(config)
        n_features = config.n_features_per_level
        self.dense_resolutions = [r for r in resolutions if (r + 1) ** 3 <= self.table_size]
        hashed = resolutions[len(self.dense_resolutions) :]
        self.dense_grids = nn.ParameterList(
            nn.Parameter(torch.empty(1, n_features, r + 1, r + 1, r + 1).uniform_(-1e-4, 1e-4))
            for r in self.dense_resolutions
        )
        self.register_buffer("hashed_resolutions", torch.tensor(hashed, dtype=torch.long), persistent=False)
        self.hash_tables = nn.Parameter(torch.empty(len(hashed), self.table_size, n_features).uniform_(-1e-4, 1e-4))

    @property
    def n_output_dims(self) -> int:
        return self.config.n_levels * self.config.n_features_per_level

    def bytes_per_point(self) -> int:
        """Peak bytes of temporaries per evaluated point (forward and backward) on the fused path:
        the output and its gradient, one corner's index, weight and gathered features, and the
        per-axis corner coordinates and weights of one level (float32, int64)."""
        n_features = self.config.n_features_per_level
        return 4 * 3 * self.n_output_dims + 8 * (6 + 2) + 4 * (6 + 4 + 3 * n_features) + 64

    def forward(self, positions: Tensor) -> Tensor:
        positions = positions.clamp(0.0, 1.0)
        fused = self.fused and (self.fused_position_gradients or not positions.requires_grad)
        outputs = []
        for table, resolution in zip(self.dense_grids, self.dense_resolutions, strict=True):
            outputs.append(_DenseLevel.apply(positions, table, resolution) if fused
                           else _grid_sample_level(table, positions))
        if len(self.hashed_resolutions):
            if fused:
                resolutions = self.hashed_resolutions.tolist()
                outputs.append(_FusedLevels.apply(positions, self.hash_tables, resolutions))
            else:
                outputs.append(self._hashed(positions))
        return torch.cat(outputs, dim=-1)

    def _hashed(self, positions: Tensor) -> Tensor:
        """The reference path: every level's 8 corners at once (``[L, N, 8]`` tensors)."""
        scaled = positions[None] * self.hashed_resolutions.view(-1, 1, 1).to(positions.dtype)  # [L, N, 3]
        cell = scaled.detach().floor()
        indices = corner_indices(cell.long(), self.hashed_resolutions, self.table_size)  # [L, N, 8]
        weights = corner_weights(scaled - cell)  # [L, N, 8]
        n_levels, n_points = indices.shape[:2]
        level_offset = torch.arange(n_levels, device=positions.device).view(-1, 1, 1) * self.table_size
        table = self.hash_tables.view(-1, self.config.n_features_per_level)
        n_features = self.config.n_features_per_level
        features = table.index_select(0, (indices + level_offset).reshape(-1)).view(*indices.shape, n_features)
        encoded = (features * weights[..., None]).sum(2)  # [L, N, F]
        return encoded.permute(1, 0, 2).reshape(n_points, n_levels * n_features)


class TcnnHashGrid(nn.Module):
    """tiny-cuda-nn's fused hash grid with the same configuration (CUDA only)."""

    def __init__(self, config: HashGridConfig) -> None:
        super().__init__()
        import tinycudann as tcnn

        self.config = config
        self.encoding = tcnn.Encoding(
            3,
            {
                "otype": "HashGrid",
                "n_levels": config.n_levels,
                "n_features_per_level": config.n_features_per_level,
                "log2_hashmap_size": config.log2_hashmap_size,
                "base_resolution": config.base_resolution,
                "per_level_scale": config.per_level_scale,
            },
        )

    @property
    def n_output_dims(self) -> int:
        return self.config.n_levels * self.config.n_features_per_level

    def forward(self, positions: Tensor) -> Tensor:
        return self.encoding(positions.clamp(0.0, 1.0)).float()


def tcnn_available() -> tuple[bool, str]:
    """Whether tiny-cuda-nn can be used here, and why (for ``dreamsmith doctor``)."""
    if not torch.cuda.is_available():
        return False, "no CUDA device"
    try:
        import tinycudann  # noqa: F401
    except Exception as error:  # an import of a compiled extension can fail in many ways
        return False, f"tinycudann not importable ({type(error).__name__}: {error})"
    return True, "tinycudann installed and a CUDA device present"


class HashGrid(nn.Module):
    """Hash-grid encoding with progressive levels, on the fastest backend available.

    ``backend``: "auto" (tiny-cuda-nn on CUDA when installed, else PyTorch), "torch" or "tcnn".
    """

    def __init__(self, config: HashGridConfig, device: torch.device | str = "cpu", backend: str = "auto") -> None:
        super().__init__()
        self.config = config
        use_tcnn = backend == "tcnn" or (
            backend == "auto" and torch.device(device).type == "cuda" and tcnn_available()[0]
        )
        self.backend = "tcnn" if use_tcnn else "torch"
        self.grid = TcnnHashGrid(config) if use_tcnn else TorchHashGrid(config)
        self.register_buffer("level_mask", torch.ones(self.n_output_dims), persistent=False)
        self.set_step(0)

    @property
    def n_output_dims(self) -> int:
        return self.grid.n_output_dims

    def bytes_per_point(self) -> int:
        """Peak bytes of temporaries per encoded point (tiny-cuda-nn: its output and gradient)."""
        if isinstance(self.grid, TorchHashGrid):
            return self.grid.bytes_per_point()
        return 4 * 3 * self.n_output_dims

    def set_step(self, step: int) -> None:
        """Enable the levels that progressive training allows at ``step``."""
        config = self.config
        active = config.n_levels
        if config.update_steps > 0:
            active = min(config.n_levels, config.start_level + step // config.update_steps)
        mask = torch.zeros(config.n_levels, config.n_features_per_level, device=self.level_mask.device)
        mask[:active] = 1.0
        self.level_mask.copy_(mask.reshape(-1))

    def forward(self, positions: Tensor) -> Tensor:
        """positions: ``[N, 3]`` in [0, 1] -> ``[N, n_levels * n_features_per_level]``."""
        return self.grid(positions) * self.level_mask
