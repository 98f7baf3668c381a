"""A body-part labelling carried by the mesh (a GLB's ``_BODY_PART`` vertex attribute): read back, used by
``--region upper|lower|part:NAMES``, drawn as the pose image, and refused in one line where it cannot be."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from test_generate import assert_clean_failure, run_cli  # noqa: E402
from tryon_score import capsule, striped_garment  # noqa: E402

from dreamsmith.errors import DreamsmithError  # noqa: E402
from dreamsmith.exporters.bake import sample_texture  # noqa: E402
from dreamsmith.tryon.body_parts import ATTRIBUTE, VIRIDIS, PartRegion, parse_parts, read_body_parts  # noqa: E402
from dreamsmith.tryon.garments import Garment, check_regions, mesh_regions  # noqa: E402

TORSO, LEG = 1, 7


def labelled_capsule(path: Path, resolution: int = 24) -> tuple[trimesh.Trimesh, np.ndarray]:
    """The toy capsule with its upper right quarter labelled torso, the rest an upper leg (a labelling no
    height split gives), written as a GLB; returns the mesh and the labels."""
    mesh = capsule(path, resolution)
    middle = (mesh.vertices[:, 1].min() + mesh.vertices[:, 1].max()) / 2
    labels = np.where((mesh.vertices[:, 1] > middle) & (mesh.vertices[:, 0] > 0), TORSO, LEG).astype(np.float32)
    mesh.vertex_attributes[ATTRIBUTE] = labels
    mesh.export(path)
    return mesh, labels


def test_the_labelling_is_read_back_and_regions_follow_it(tmp_path):
    mesh, labels = labelled_capsule(tmp_path / "labelled.glb")
    body = read_body_parts(tmp_path / "labelled.glb")
    assert body is not None and np.array_equal(body.labels, labels.astype(np.int64))
    assert read_body_parts(Path(capsule(tmp_path / "plain.glb", 16) and tmp_path / "plain.glb")) is None
    garment = Garment(Path("g.png"), np.ones((4, 4, 4), np.float32))
    (upper,) = mesh_regions(["upper"], [garment], mesh.vertices, mesh.faces, body)
    assert isinstance(upper, PartRegion)
    assert np.array_equal(upper.contains(mesh.vertices), labels == TORSO)
    points = torch.from_numpy(mesh.vertices).float()[None]
    assert torch.equal(upper.contains(points)[0], torch.from_numpy(labels == TORSO))
    (legs,) = mesh_regions(["part:upper-legs"], [garment], mesh.vertices, mesh.faces, body)
    assert np.array_equal(legs.contains(mesh.vertices), labels == LEG)
    (head,) = check_regions(["part:head"], 1)
    with pytest.raises(DreamsmithError, match="covers no triangle"):
        mesh_regions([head], [garment], mesh.vertices, mesh.faces, body)
    with pytest.raises(DreamsmithError, match="needs a mesh with a body-part labelling"):
        mesh_regions(["part:torso"], [garment], mesh.vertices, mesh.faces, None)


def test_part_names_and_indices_parse_and_unknown_ones_are_refused():
    assert parse_parts("part:torso+head") == (1, 2, 23, 24)
    assert parse_parts("part:3,4") == (3, 4)
    with pytest.raises(DreamsmithError, match="'elbow' is not a body part"):
        check_regions(["part:elbow"], 1)
    with pytest.raises(DreamsmithError, match="is not a body part"):
        parse_parts("part:25")


def test_the_pose_image_colours_each_part_as_densepose_does_and_leaves_the_background_black(tmp_path):
    labelled_capsule(tmp_path / "labelled.glb")
    body = read_body_parts(tmp_path / "labelled.glb")
    points = torch.from_numpy(body.vertices[:2]).float().view(1, 1, 2, 3)
    opacity = torch.tensor([1.0, 0.0]).view(1, 1, 2, 1)
    image = body.pose_image(points, opacity)[0, :, 0]
    scaled = body.labels[0] / 24 * 4
    low = int(scaled)
    expected = VIRIDIS[low] + (scaled - low) * (VIRIDIS[low + 1] - VIRIDIS[low])
    assert torch.allclose(image[:, 0], torch.from_numpy(expected).float()) and torch.equal(image[:, 1], torch.zeros(3))


def test_a_malformed_labelling_is_refused_in_one_line(tmp_path):
    mesh = capsule(tmp_path / "capsule.glb", 16)
    for values, needle in ((np.full(len(mesh.vertices), 30.0), "not one part index"),
                           (np.full(len(mesh.vertices), 1.5), "not one part index"),
                           (np.zeros(len(mesh.vertices)), "labels no vertex")):
        mesh.vertex_attributes[ATTRIBUTE] = values.astype(np.float32)
        mesh.export(tmp_path / "bad.glb")
        with pytest.raises(DreamsmithError, match=needle):
            read_body_parts(tmp_path / "bad.glb")
    striped_garment(tmp_path / "stripes.png")
    result = run_cli("tryon", str(tmp_path / "capsule.glb"), str(tmp_path / "stripes.png"), "--region", "part:torso",
                     "--out", str(tmp_path / "run"))
    assert_clean_failure(result, "needs a mesh with a body-part labelling")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_tryon_dresses_the_labelled_torso_only(tmp_path):
    source, labels = labelled_capsule(tmp_path / "labelled.glb")
    striped_garment(tmp_path / "stripes.png")
    out = tmp_path / "run"
    result = run_cli("tryon", str(tmp_path / "labelled.glb"), str(tmp_path / "stripes.png"), "--steps", "1",
                     "--texture-size", "128", "--set", "camera.batch_size=1", "--set", "camera.eval_views=4",
                     "--set", "camera.eval_resolution=32", "--set", "export.preview_resolution=48", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "carries a body-part labelling" in result.stderr
    asset = trimesh.load(out / "asset.glb", force="mesh", process=False)
    texture = np.asarray(asset.visual.material.baseColorTexture.convert("RGB"), dtype=np.float32) / 255.0
    colour = sample_texture(texture, np.asarray(asset.visual.uv)[asset.faces].mean(1))
    # the asset's faces are the source's (same order); a face is one part's when all its corners are
    torso = (labels[source.faces] == TORSO).all(1)
    legs = (labels[source.faces] == LEG).all(1)
    body = np.asarray(source.visual.vertex_colors, dtype=np.float32)[0, :3] / 255.0
    assert np.abs(colour[legs] - body).mean() <= 0.03  # the unlabelled-for-upper three quarters keep their colour
    assert np.abs(colour[torso] - body).mean() > 0.2  # the labelled torso is dressed
    assert json.loads((out / "tryon.json").read_text())["regions"] == ["upper"]
