"""The toyworld's ground truth: exact SDFs, captions, held-out split."""

from __future__ import annotations

import math

import pytest
import torch

from dreamsmith.toyworld import world as tw


def _ring(radius: float, y: float, n: int = 16) -> torch.Tensor:
    """``[n, 3]`` points on a horizontal circle."""
    angle = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)
    return torch.stack([radius * torch.cos(angle), torch.full_like(angle, y), radius * torch.sin(angle)], -1)


SURFACE_POINTS = {
    "sphere": torch.nn.functional.normalize(torch.randn(64, 3, dtype=torch.float64,
                                                        generator=torch.Generator().manual_seed(0)), dim=-1) * 0.45,
    "cube": torch.tensor([[0.3, 0.1, -0.2], [-0.1, -0.3, 0.25], [0.0, 0.0, 0.3], [0.3, 0.3, 0.3]],
                         dtype=torch.float64),
    "cylinder": torch.cat([_ring(0.3, 0.2), _ring(0.1, 0.35), _ring(0.25, -0.35), _ring(0.3, -0.35)]),
    "cone": torch.cat([_ring(0.35, -0.35), _ring(0.175, 0.0), _ring(0.2, -0.35),
                       torch.tensor([[0.0, 0.35, 0.0]], dtype=torch.float64)]),
    "torus": torch.cat([_ring(0.44, 0.0), _ring(0.20, 0.0), _ring(0.32, 0.12), _ring(0.32, -0.12)]),
    "capsule": torch.cat([_ring(0.22, 0.1), _ring(0.22, -0.18),
                          torch.tensor([[0.0, 0.4, 0.0], [0.0, -0.4, 0.0]], dtype=torch.float64)]),
}


@pytest.mark.parametrize("shape", list(tw.SHAPES))
def test_points_on_each_surface_have_zero_sdf(shape: str) -> None:
    sdf = tw.SHAPES[shape](SURFACE_POINTS[shape])
    assert sdf.abs().max().item() < 1e-5


@pytest.mark.parametrize(
    ("shape", "point", "expected"),
    [
        ("sphere", (0.0, 0.0, 0.0), -0.45),
        ("sphere", (1.0, 0.0, 0.0), 0.55),
        ("cube", (0.0, 0.0, 0.0), -0.3),
        ("cube", (0.5, 0.0, 0.0), 0.2),
        ("cube", (0.4, 0.4, 0.3), math.sqrt(0.02)),  # nearest point is an edge
        ("cylinder", (0.0, 0.0, 0.0), -0.3),
        ("cylinder", (0.0, 0.6, 0.0), 0.25),
        ("cylinder", (0.4, 0.45, 0.0), math.sqrt(0.02)),  # nearest point is the rim
        ("cone", (0.0, 0.6, 0.0), 0.25),  # above the apex
        ("cone", (0.0, -0.5, 0.0), 0.15),  # below the base
        ("cone", (0.0, -0.3, 0.0), -0.05),  # just above the base, on the axis
        ("torus", (0.0, 0.0, 0.0), 0.2),  # the hole
        ("torus", (0.32, 0.0, 0.0), -0.12),  # the core of the ring
        ("capsule", (0.0, 0.0, 0.0), -0.22),
        ("capsule", (0.0, 0.6, 0.0), 0.2),
    ],
)
def test_known_inside_and_outside_distances(shape: str, point: tuple[float, float, float], expected: float) -> None:
    value = tw.SHAPES[shape](torch.tensor([point], dtype=torch.float64)).item()
    assert value == pytest.approx(expected, abs=1e-9)


def test_cone_distance_to_its_slanted_side() -> None:
    # a point pushed off the side's midpoint (r 0.175, y 0) along the outward side normal
    normal = torch.tensor([0.7, 0.35], dtype=torch.float64)
    normal = normal / normal.norm()
    r, y = 0.175 + 0.1 * normal[0].item(), 0.1 * normal[1].item()
    assert tw.sdf_cone(torch.tensor([[r, y, 0.0]], dtype=torch.float64)).item() == pytest.approx(0.1, abs=1e-9)


@pytest.mark.parametrize("shape", list(tw.SHAPES))
def test_every_shape_fits_the_bounding_sphere(shape: str) -> None:
    far = torch.nn.functional.normalize(torch.randn(2000, 3, generator=torch.Generator().manual_seed(1)), dim=-1)
    assert (tw.SHAPES[shape](far * tw.BOUNDING_RADIUS) > 0).all()


def test_caption_articles() -> None:
    assert tw.caption("orange", "cube") == "an orange cube"
    assert tw.caption("red", "torus") == "a red torus"
    assert tw.caption("yellow", "cone") == "a yellow cone"


def test_caption_counts_and_held_out_split() -> None:
    assert len(tw.ALL_CAPTIONS) == 48 == len(set(tw.ALL_CAPTIONS))
    assert len(tw.TRAIN_CAPTIONS) == 44
    assert len(tw.HELD_OUT_CAPTIONS) == 4
    assert set(tw.HELD_OUT_CAPTIONS) <= set(tw.ALL_CAPTIONS)
    assert not set(tw.HELD_OUT_CAPTIONS) & set(tw.TRAIN_CAPTIONS)
    assert set(tw.TRAIN_CAPTIONS) | set(tw.HELD_OUT_CAPTIONS) == set(tw.ALL_CAPTIONS)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a red cube", ("red", "cube")),
        ("an red cube", ("red", "cube")),
        ("an orange cone", ("orange", "cone")),
        ("a orange cone", ("orange", "cone")),
        ("  A  Purple Torus ", ("purple", "torus")),
    ],
)
def test_parse_caption_accepts_either_article(text: str, expected: tuple[str, str]) -> None:
    assert tw.parse_caption(text) == expected


@pytest.mark.parametrize("text", ["", "red cube", "the red cube", "a pink cube", "a red pyramid", "a red cube now"])
def test_parse_caption_rejects_other_text_with_a_clear_message(text: str) -> None:
    with pytest.raises(ValueError, match="not a toyworld caption"):
        tw.parse_caption(text)


def test_every_caption_round_trips() -> None:
    for text in tw.ALL_CAPTIONS:
        colour, shape = tw.parse_caption(text)
        assert tw.caption(colour, shape) == text


def test_caption_sdf_gives_albedo_of_its_colour() -> None:
    sdf, albedo = tw.caption_sdf("a blue sphere")
    assert sdf is tw.sdf_sphere
    assert albedo.tolist() == pytest.approx([0.15, 0.30, 0.90])
