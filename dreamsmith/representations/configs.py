"""The representations' config dataclasses, torch-free: a run's config validates (and the command
line answers a usage error) without importing torch. Each is re-exported beside the class it configures."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from dreamsmith.configs import Range


@dataclass
class HashGridConfig:
    n_levels: Annotated[int, Range(1, 32)] = 16
    """Number of resolution levels."""
    n_features_per_level: Annotated[int, Range(1, 8)] = 2
    """Feature channels stored per level."""
    log2_hashmap_size: Annotated[int, Range(8, 24)] = 19
    """log2 of the number of entries of each level's table."""
    base_resolution: Annotated[int, Range(2, 4096)] = 16
    """Grid resolution of the coarsest level."""
    per_level_scale: Annotated[float, Range(1, 4)] = 1.447269237440378
    """Resolution growth factor between levels (16 levels from 16 to 2048 by default)."""
    start_level: Annotated[int, Range(1, 32)] = 16
    """Levels active at step 0 (progressive training: fewer levels first)."""
    update_steps: Annotated[int, Range(0, None)] = 0
    """Steps between enabling one more level (0: all levels from the start)."""


@dataclass
class NeRFConfig:
    bound: Annotated[float, Range(0.01, 100)] = 1.0
    """Half-size of the cube [-bound, bound]^3 the field covers (metres)."""
    hash_grid: HashGridConfig = field(default_factory=HashGridConfig)
    """The multiresolution hash-grid encoding."""
    hidden_dim: Annotated[int, Range(1, 1024)] = 64
    """Width of the density and albedo MLPs."""
    hidden_layers: Annotated[int, Range(0, 16)] = 1
    """Hidden layers of each MLP."""
    blob_density: float = 10.0
    """Density bias at the centre (Magic3D blob initialization)."""
    blob_radius: float = 0.5
    """Radius where the blob bias crosses zero (metres)."""
    blob_outer_density: float | None = None
    """Slope of the bias outside ``blob_radius``, as the density it would reach at the centre: a value
    above ``blob_density`` keeps a shallow blob's surroundings empty, so the occupancy grid skips them
    (None: ``blob_density``, Magic3D's single line)."""
    backend: str = "auto"
    """Hash-grid backend: auto (tiny-cuda-nn on CUDA when installed), torch or tcnn."""
    normals: str = "finite_difference"
    """How normals come from the density: finite_difference (3 extra density queries, forward
    differences; cheap on the CPU) or analytic (autograd of the density, differentiated again in
    backward)."""
    normal_eps: float = 0.005
    """Step of the finite differences (metres)."""
    normal_gradients: bool = True
    """Backpropagate through the normals, so shading trains the geometry directly; False detaches
    them (shading then trains geometry only through where the surface is; several times cheaper)."""
    optimize_geometry: bool = True
    """Train the density (hash tables and both heads); False trains the albedo head alone, so the shape stays
    as it started (``dreamsmith edit --keep geometry``)."""


@dataclass
class BackgroundConfig:
    kind: str = "mlp"
    """solid (a fixed colour) or mlp (a small learned function of the view direction)."""
    color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Colour of a solid background (sRGB in [0, 1])."""
    random_color_probability: float = 0.5
    """While training an mlp background, chance per step of a random solid colour instead
    (threestudio's trick that stops the background from explaining the object)."""
    hidden_dim: int = 32
    """Width of the mlp background."""


@dataclass
class TextureConfig:
    """Configuration of a texture representation: fixed geometry coloured by a UV texture."""

    mesh: str | None = None
    """The GLB/OBJ whose geometry is kept (null: the previous stage's DMTet surface)."""
    texture_size: Annotated[int, Range(4, 4096)] = 256
    """Texels along each side of the square UV texture that is optimized."""
    max_faces: Annotated[int, Range(1, None)] = 200_000
    """Most faces painted; a bigger mesh is decimated to this many (its UVs unwrapped again)."""
    init_color: tuple[float, float, float] = (0.5, 0.5, 0.5)
    """Starting colour of every texel, sRGB in (0, 1)."""


@dataclass
class DMTetConfig:
    """Configuration of a DMTet representation."""

    resolution: Annotated[int, Range(2, 256)] = 64
    """Grid cells along each axis; the grid has (resolution+1)^3 vertices and 6*resolution^3 tets."""
    bound: Annotated[float, Range(0.01, 100)] = 0.6
    """Half-extent in metres of the grid cube [-bound, bound]^3 (the asset lives in radius 0.5)."""
    deformation_scale: float = 0.5
    """Largest vertex offset along each axis, in grid cells (offset = tanh(param) * cell * scale)."""
    optimize_deformation: bool = True
    """Whether the vertex offsets are learned (False: only the SDF moves the surface)."""
    optimize_geometry: bool = True
    """Whether the surface moves at all (False: SDF and offsets frozen, only the texture trains:
    ProlificDreamer's texture stage on the fixed geometry)."""
    eval_chunk: int = 65536
    """Points per call when an initializer evaluates a field (bounds memory for NeRF fields)."""
