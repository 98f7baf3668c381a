"""Property-based fuzz of what users type: any config override resolves or is refused with a
DreamsmithError; any command line ends in exit 0, or a clean error (one ``error:`` line, or click's
usage message) with no traceback, no "internal error" and no file written outside the run directory."""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dreamsmith.configs import valid_keys
from dreamsmith.engine.config import RunConfig, StageConfig
from dreamsmith.engine.overrides import make_config
from dreamsmith.errors import DreamsmithError

KEYS = sorted({k for k in valid_keys(StageConfig) + valid_keys(RunConfig) if not k.startswith("stages")}
              | {"guidance.guidance_scale", "guidance.weighting", "guidance.conditioners", "guidance.name",
                 "coarse.camera.resolution", "export.formats", "name", "coarse.name"})
TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**25), max_value=10**25),
    st.floats(allow_nan=True, allow_infinity=True), TEXT, st.sampled_from(["[", "]", "[red]", "{a: 1}", "auto"]),
)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(TEXT, inner, max_size=3),
                      max_leaves=8)


def yaml_text(value) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


OVERRIDES = st.lists(
    st.one_of(
        st.builds(lambda k, v: f"{k}={yaml_text(v)}", st.sampled_from(KEYS), VALUES),
        st.builds(lambda k, v: f"{k}={v}", TEXT, TEXT),
        TEXT,
    ),
    max_size=3,
)


@settings(max_examples=300, deadline=None, derandomize=bool(os.environ.get("CI")), database=None)
@given(prompt=TEXT, overrides=OVERRIDES, steps=st.one_of(st.none(), st.integers(-5, 10**9)))
def test_any_override_resolves_or_is_refused_by_a_dreamsmith_error(prompt, overrides, steps):
    try:
        config = make_config(prompt or "a red cube", preset="toy", steps=steps, overrides=overrides)
    except DreamsmithError as error:
        assert str(error) and "\n" not in str(error).strip()
        return
    assert isinstance(config, RunConfig)


OPTIONS = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["--steps", "--seed", "--preset", "--device", "--out"]),
                  st.one_of(TEXT, st.integers(-(10**20), 10**20).map(str))).map(list),
        OVERRIDES,
        st.sampled_from([["--resume"], ["--overwrite"], ["--quiet"], ["--bogus"], ["--allow-pickle"]]),
    ),
    max_size=3,
)


def run_main(argv: list[str]) -> tuple[int, str]:
    from dreamsmith.cli import main

    stderr, stdout = io.StringIO(), io.StringIO()
    code = 0
    old = sys.argv
    sys.argv = ["dreamsmith", *argv]
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
            main()
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else 1
    finally:
        sys.argv = old
    return code, stderr.getvalue() + stdout.getvalue()


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@settings(max_examples=150, deadline=None, derandomize=bool(os.environ.get("CI")), database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompt=TEXT, options=OPTIONS, command=st.sampled_from(["generate", "export"]))
def test_any_command_line_ends_cleanly_and_writes_nothing_outside(sandbox, monkeypatch, prompt, options, command):
    monkeypatch.chdir(sandbox)
    before = set(Path(sandbox).rglob("*"))
    flat = [item for option in options for item in option]
    if command == "generate":
        argv = ["generate", prompt, "--model", str(Path(sandbox) / "no-such-model"), *flat]
    else:
        argv = ["export", str(Path(sandbox) / (prompt or "x")), *[o for o in flat if "=" not in o]]
    code, output = run_main(argv)
    assert "Traceback" not in output and "internal error" not in output, output
    assert code in (1, 2), output  # no model here: nothing may succeed
    if code == 1:
        lines = [line for line in output.strip().splitlines() if line.strip()]
        assert lines[0].startswith("error:") or lines[0].startswith("interrupted"), output
    assert set(Path(sandbox).rglob("*")) == before, "a file was written"


ROW = st.dictionaries(st.sampled_from(["prompt", "preset", "seed", "steps", "id", "overrides", "formats",
                                       "texture_size", "max_triangles", "model", "mesh", "bogus"]),
                      VALUES, max_size=5)


@settings(max_examples=200, deadline=None, derandomize=bool(os.environ.get("CI")), database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(ROW, max_size=4), suffix=st.sampled_from([".jsonl", ".csv", ".yaml"]), raw=TEXT)
def test_any_manifest_parses_into_jobs_and_line_numbered_problems_or_one_error(sandbox, rows, suffix, raw):
    import csv
    import json as json_module

    import yaml

    from dreamsmith.engine.batch.manifest import load_manifest
    from dreamsmith.engine.batch.validation import validate

    path = Path(sandbox) / f"manifest{suffix}"
    if suffix == ".jsonl":
        text = "\n".join(json_module.dumps(row, default=str) for row in rows) + "\n" + raw
    elif suffix == ".yaml":
        text = yaml.safe_dump({"jobs": rows}) + raw
    else:
        buffer = io.StringIO()
        keys = sorted({key for row in rows for key in row})
        writer = csv.DictWriter(buffer, fieldnames=keys or ["prompt"])
        writer.writeheader()
        writer.writerows([{k: yaml_text(v) for k, v in row.items()} for row in rows])
        text = buffer.getvalue() + raw
    path.write_text(text, encoding="utf-8")
    try:
        manifest = validate(load_manifest(path))
    except DreamsmithError as error:
        assert str(error) and "\n" not in str(error).strip()
        return
    assert all(problem.line >= 1 and problem.message for problem in manifest.problems)
    assert len(manifest.jobs) + len(manifest.problems) >= 1
