"""The QA report: exact numbers on a known cube, and pass/warn/fail against the profiles."""

import numpy as np
import pytest
from export_shapes import unit_cube

from dreamsmith.errors import DreamsmithError
from dreamsmith.exporters.qa import PROFILES, evaluate, mesh_metrics, qa_report
from dreamsmith.representations.mesh import Mesh

SIZE = 256


def uv_cube(cells: bool) -> Mesh:
    """The unit cube with 4 vertices per face (24): each face's UVs fill one cell of a 3 x 2 grid
    (``cells``) or the whole unit square (every face on top of the others)."""
    cube = unit_cube()
    vertices, uvs, faces = [], [], []
    for quad in range(6):
        a, b, c = cube.faces[2 * quad]
        d = cube.faces[2 * quad + 1][2]
        corners = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=np.float64)
        if cells:
            corners = (corners + [quad % 3, quad // 3]) / [3, 2]
        base = len(vertices)
        vertices += [cube.vertices[i] for i in (a, b, c, d)]
        uvs += list(corners)
        faces += [[base, base + 1, base + 2], [base, base + 2, base + 3]]
    texture = np.full((SIZE, SIZE, 3), 0.5, np.float32)
    return Mesh(np.array(vertices), np.array(faces), uvs=np.array(uvs, np.float32), base_color_texture=texture)


def test_cube_numbers_are_exact():
    metrics = mesh_metrics(uv_cube(cells=True))
    assert metrics["triangles"] == 12 and metrics["vertices"] == 24
    assert metrics["watertight"] and metrics["boundary_edges"] == 0 and metrics["non_manifold_edges"] == 0
    assert metrics["degenerate_faces"] == 0 and metrics["connected_components"] == 1
    assert metrics["bounding_box_m"] == {"min": [-0.5] * 3, "max": [0.5] * 3, "size": [1.0] * 3}
    assert metrics["surface_area_m2"] == pytest.approx(6.0)
    assert metrics["uvs_inside_unit_square"] and metrics["uv_overlap_fraction"] == 0.0
    assert metrics["texel_density_per_m"] == pytest.approx(SIZE / np.sqrt(6))  # UV area 1 over 6 m²
    assert metrics["texture_sizes"] == [[SIZE, SIZE]]


def test_stacked_uvs_overlap_completely():
    metrics = mesh_metrics(uv_cube(cells=False))
    assert metrics["uv_overlap_fraction"] == pytest.approx(1.0)
    assert metrics["texel_density_per_m"] == pytest.approx(SIZE)  # UV area 6 over 6 m²
    statuses = {c["check"]: c["status"] for c in qa_report(uv_cube(cells=False), "pc")["checks"]}
    assert statuses["UV overlap"] == "fail"


def test_fins_and_degenerate_faces_are_counted():
    cube = unit_cube()
    vertices = np.vstack([cube.vertices, [[0.0, 1.0, 0.0]]])
    fin = [cube.faces[0][0], cube.faces[0][1], 8]  # a third face on an edge of the cube
    finned = Mesh(vertices, np.vstack([cube.faces, [fin]]))
    metrics = mesh_metrics(finned)
    assert metrics["non_manifold_edges"] == 1 and metrics["boundary_edges"] == 2 and not metrics["watertight"]
    statuses = {c["check"]: c["status"] for c in qa_report(finned)["checks"]}
    assert statuses["non-manifold edges"] == "warn" and statuses["watertight"] == "warn"
    assert statuses["UVs"] == "fail" and statuses["base colour texture"] == "fail"
    degenerate = Mesh(cube.vertices, np.vstack([cube.faces, [[4, 4, 5]]]))
    assert mesh_metrics(degenerate)["degenerate_faces"] == 1
    assert {c["check"]: c["status"] for c in qa_report(degenerate)["checks"]}["degenerate faces"] == "fail"


def test_profiles_grade_the_triangle_budget():
    metrics = mesh_metrics(uv_cube(cells=True))
    grade = {}
    for triangles in (10_000, 12_000, 13_000, 120_000):
        for name, budgets in PROFILES.items():
            checks = evaluate({**metrics, "triangles": triangles}, budgets)
            grade[name, triangles] = next(c["status"] for c in checks if c["check"] == "triangles")
    assert [grade["mobile", n] for n in (10_000, 12_000, 13_000)] == ["pass", "warn", "fail"]
    assert grade["pc", 120_000] == "warn" and grade["hero", 120_000] == "pass"


def test_non_power_of_two_textures_fail_and_oversized_ones_warn():
    cube = uv_cube(cells=True)
    for size, status in ((100, "fail"), (2048, "warn"), (1024, "pass")):
        report = qa_report(cube.copy(base_color_texture=np.zeros((size, size, 3), np.float32)), "mobile")
        assert next(c["status"] for c in report["checks"] if c["check"] == "texture sizes") == status


def test_a_clean_cube_passes_every_profile_it_fits():
    report = qa_report(uv_cube(cells=True).copy(base_color_texture=np.zeros((1024, 1024, 3), np.float32)), "pc")
    assert report["status"] == "pass", [c for c in report["checks"] if c["status"] != "pass"]


def test_unknown_profile_is_a_clear_error():
    with pytest.raises(DreamsmithError, match="choose one of mobile, pc, hero"):
        qa_report(unit_cube(), "console")
