"""The batch gallery page: its cards from a batch's summary or from run folders, and the page itself in
headless Chromium from the file system and over http: every <model-viewer> loads and shows its asset."""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import threading
from pathlib import Path

import pytest
from export_shapes import ball, smooth_albedo

from dreamsmith.errors import DreamsmithError
from dreamsmith.exporters import gallery as gallery_module
from dreamsmith.exporters.gallery import gallery_entries, write_gallery
from dreamsmith.exporters.options import ExportOptions
from dreamsmith.exporters.pipeline import export_mesh

CHROMIUM = Path("/usr/bin/chromium")


def make_run(folder: Path, prompt: str, seed: int, radius: float, formats: tuple[str, ...], profile: str) -> dict:
    """A run folder as generate leaves it: the exported asset with QA and previews, and its report."""
    result = export_mesh(ball(radius, 32), smooth_albedo, folder,
                         ExportOptions(formats=formats, texture_size=128, preview_resolution=48, profile=profile))
    (folder / "report.json").write_text(json.dumps({"prompt": prompt, "seed": seed, "preset": "toy"}))
    return result.qa["asset"]


@pytest.fixture(scope="module")
def batch_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gallery")
    qa = [make_run(root / "jobs" / "cube", "a red <cube>", 1, 0.3, ("glb", "obj"), "pc"),
          make_run(root / "jobs" / "ball", "a blue sphere", 2, 0.2, ("glb",), "mobile")]
    jobs = [{"id": "cube", "dir": "jobs/cube", "state": "done", "prompt": "a red <cube>"},
            {"id": "ball", "dir": "jobs/ball", "state": "done", "prompt": "a blue sphere"},
            {"id": "barrel", "dir": "jobs/barrel", "state": "failed", "prompt": "a barrel", "seed": 3,
             "error": "its worker (local-0 pid 7) was killed by SIGKILL"}]
    (root / "summary.json").write_text(json.dumps({"jobs": jobs}))
    (root / "qa.expected.json").write_text(json.dumps([q["status"] for q in qa]))
    return root


def test_cards_come_from_the_batch_summary_with_qa_triangles_and_files(batch_dir):
    entries = {e.key: e for e in gallery_entries(batch_dir)}
    assert sorted(entries) == ["ball", "barrel", "cube"]
    cube = entries["cube"]
    assert (cube.prompt, cube.seed, cube.preset, cube.folder) == ("a red <cube>", 1, "toy", "jobs/cube")
    qa = json.loads((batch_dir / "jobs" / "cube" / "qa.json").read_text())["asset"]
    assert cube.qa == qa["status"] and cube.triangles == qa["metrics"]["triangles"] > 0
    assert {"asset.glb", "asset.obj", "asset_poster.png", "asset_turntable.gif"} <= set(cube.files)
    assert "asset.obj" not in entries["ball"].files
    barrel = entries["barrel"]
    assert (barrel.qa, barrel.error) == ("failed", "its worker (local-0 pid 7) was killed by SIGKILL")


def test_the_page_links_only_existing_files_and_escapes_prompts(batch_dir):
    page = write_gallery(batch_dir).read_text()
    assert page.count("<model-viewer ") == 2 and page.count('class="card"') == 3
    assert "a red &lt;cube&gt;" in page and "a red <cube>" not in page
    assert 'href="jobs/cube/asset.obj"' in page and 'href="jobs/ball/asset.obj"' not in page
    assert "killed by SIGKILL" in page and 'data-filter="failed"' in page
    assert "https://" not in page and "http://" not in page  # nothing comes from the network
    models = sorted(p.name for p in (batch_dir / "gallery" / "models").iterdir())
    assert models == ["ball.js", "cube.js"]
    assert (batch_dir / "gallery" / "model-viewer.min.js").stat().st_size > 100_000


def test_run_folders_without_a_summary_are_found_and_stale_models_removed(tmp_path, batch_dir):
    root = tmp_path / "runs"
    shutil.copytree(batch_dir / "jobs" / "ball", root / "props" / "ball")
    (root / "gallery" / "models").mkdir(parents=True)
    (root / "gallery" / "models" / "gone.js").write_text("")
    write_gallery(root)
    assert [e.key for e in gallery_entries(root)] == ["props_ball"]
    assert sorted(p.name for p in (root / "gallery" / "models").iterdir()) == ["props_ball.js"]
    with pytest.raises(DreamsmithError, match="holds no finished run"):
        write_gallery(tmp_path / "runs" / "gallery")


def test_a_missing_model_viewer_bundle_is_a_clear_error(batch_dir, monkeypatch, tmp_path):
    monkeypatch.setattr(gallery_module, "BUNDLE", tmp_path / "model-viewer.min.js")
    with pytest.raises(DreamsmithError, match="tools/vendor_model_viewer.py"):
        write_gallery(batch_dir)


def browser():
    playwright = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright (dev extra)")
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    return playwright.sync_playwright()


def check_page(url: str, cards: int, expected_qa: list[str], screenshot: Path | None = None) -> None:
    with browser() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                              args=["--enable-unsafe-swiftshader", "--use-angle=swiftshader"])
        page = chromium.new_page(viewport={"width": 1100, "height": 700})
        errors: list[str] = []
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(url)
        viewers = page.locator("model-viewer")
        assert viewers.count() == len(expected_qa)
        for index in range(viewers.count()):
            viewer = viewers.nth(index)
            viewer.scroll_into_view_if_needed()
            viewer.evaluate("v => new Promise(r => v.loaded ? r() : v.addEventListener('load', r, {once: true}))")
        page.wait_for_function("() => [...document.querySelectorAll('model-viewer')]"
                               ".every(v => v.loaded && v.modelIsVisible)", timeout=60_000)
        assert page.locator(".card").count() == cards
        page.click('button[data-filter="failed"]')
        assert page.locator(".card:visible").count() == 1
        for status in set(expected_qa):
            page.click(f'button[data-filter="{status}"]')
            assert page.locator(".card:visible").count() == expected_qa.count(status)
        page.click('button[data-filter="all"]')
        assert page.locator(".card:visible").count() == cards
        if screenshot is not None:
            page.evaluate("window.scrollTo(0, 0)")
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot))
        chromium.close()
        assert errors == []


@pytest.mark.slow
def test_every_model_viewer_loads_and_shows_its_asset_from_the_file_system(batch_dir):
    page = write_gallery(batch_dir)
    screenshot = batch_dir / "screenshot.png"
    check_page(page.resolve().as_uri(), 3, json.loads((batch_dir / "qa.expected.json").read_text()), screenshot)
    assert screenshot.stat().st_size > 10_000


@pytest.mark.slow
def test_every_model_viewer_loads_its_glb_over_http(batch_dir):
    write_gallery(batch_dir)
    handler = functools.partial(QuietHandler, directory=str(batch_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        check_page(f"http://127.0.0.1:{server.server_address[1]}/gallery.html", 3,
                   json.loads((batch_dir / "qa.expected.json").read_text()))
    finally:
        server.shutdown()
    assert any(path.endswith(".glb") for path in QuietHandler.requested)  # the GLBs themselves, not the scripts
    assert not any(path.startswith("/gallery/models/") for path in QuietHandler.requested)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    requested: list[str] = []

    def log_message(self, format: str, *args: object) -> None:
        QuietHandler.requested.append(self.path)
