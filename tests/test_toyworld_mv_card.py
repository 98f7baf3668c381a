"""The multi-view card's measures: view-to-view IoU, the per-view spread and its group cameras."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def card():
    sys.path.insert(0, str(ROOT / "tools"))
    spec = importlib.util.spec_from_file_location("toyworld_mv_card", ROOT / "tools" / "toyworld_mv_card.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_view_to_view_iou_is_one_for_one_silhouette_and_drops_with_disagreement(card):
    square = torch.zeros(8, 8, dtype=torch.bool)
    square[2:6, 2:6] = True
    same = square.expand(1, 4, 8, 8)
    assert card.pairwise_iou(same).tolist() == [1.0]
    half = square.clone()
    half[2:6, 4:6] = False  # 8 of the square's 16 pixels
    mixed = torch.stack([square, square, square, half])[None]
    # pairs: 3 of (square, square) at 1, 3 of (square, half) at 8/16
    assert card.pairwise_iou(mixed).item() == pytest.approx((3 * 1.0 + 3 * 0.5) / 6)


def test_spread_is_the_mean_within_group_deviation(card):
    assert card.spread([0.5] * 8) == 0.0
    assert card.spread([0.4, 0.6, 0.4, 0.6, 0.9, 0.9, 0.9, 0.9]) == pytest.approx(0.05)


def test_card_groups_share_elevation_and_turn_by_quarter_turns(card):
    cameras = card.group_cameras(16)
    assert len(cameras) == 4 * len(card.CARD_GROUPS)
    azimuth, elevation = cameras.azimuth.view(-1, 4), cameras.elevation.view(-1, 4)
    assert torch.equal(elevation, elevation[:, :1].expand_as(elevation))
    torch.testing.assert_close(azimuth.diff(dim=1), torch.full((len(card.CARD_GROUPS), 3), 90.0))
    torch.testing.assert_close(cameras.c2w[:, :3, 3].norm(dim=-1), torch.full((len(cameras),), 2.0))
