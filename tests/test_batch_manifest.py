"""Batch manifests: the three formats, defaults, line numbers, and every bad row reported before anything runs."""

import json

import pytest

from dreamsmith.engine.batch import load_manifest, validate
from dreamsmith.engine.batch.validation import job_config
from dreamsmith.errors import BatchError

DEFAULTS = {"steps": 20, "texture_size": 256, "overrides": ["camera.resolution=32"]}


def test_jsonl_csv_and_yaml_give_the_same_jobs_with_defaults_and_line_numbers(tmp_path):
    (tmp_path / "m.jsonl").write_text(
        json.dumps({"defaults": DEFAULTS}) + "\n\n"
        + json.dumps({"prompt": "a red cube", "seed": 3, "formats": ["glb", "obj"]}) + "\n"
        + json.dumps({"id": "ball", "prompt": "a blue sphere", "overrides": ["seed=5"], "max_triangles": 2000,
                      "profile": "mobile"}) + "\n")
    (tmp_path / "m.csv").write_text(
        "# defaults:\n#   steps: 20\n#   texture_size: 256\n#   overrides: [camera.resolution=32]\n"
        "prompt,seed,formats,id,overrides,max_triangles,profile\n"
        "a red cube,3,\"glb, obj\",,,,\n"
        "a blue sphere,,,ball,seed=5,2000,mobile\n")
    (tmp_path / "m.yaml").write_text(
        "defaults:\n  steps: 20\n  texture_size: 256\n  overrides: [camera.resolution=32]\njobs:\n"
        "  - prompt: a red cube\n    seed: 3\n    formats: glb obj\n"
        "  - {id: ball, prompt: a blue sphere, overrides: {seed: 5}, max_triangles: 2000, profile: mobile}\n")
    parsed = {name: load_manifest(tmp_path / name) for name in ("m.jsonl", "m.csv", "m.yaml")}
    for manifest in parsed.values():
        assert manifest.problems == []
        cube, ball = manifest.jobs
        assert (cube.id, cube.seed, cube.steps, cube.formats) == ("a-red-cube-seed3", 3, 20, ("glb", "obj"))
        assert cube.overrides == ("camera.resolution=32",) and cube.texture_size == 256
        assert (ball.id, ball.max_triangles, ball.profile, ball.seed) == ("ball", 2000, "mobile", None)
        assert ball.overrides == ("camera.resolution=32", "seed=5")
    assert [j.line for j in parsed["m.jsonl"].jobs] == [3, 4]
    assert [j.line for j in parsed["m.csv"].jobs] == [6, 7]
    assert [j.line for j in parsed["m.yaml"].jobs] == [6, 9]
    fingerprints = {name: [j.fingerprint() for j in m.jobs] for name, m in parsed.items()}
    assert fingerprints["m.jsonl"] == fingerprints["m.csv"] == fingerprints["m.yaml"]


def test_a_rows_fields_reach_its_run_config(tmp_path):
    (tmp_path / "m.yaml").write_text(
        "- {prompt: a red cube, seed: 4, steps: 12, formats: [glb, usdz], max_triangles: 1500, texture_size: 128,"
        " profile: mobile, lods: 1, overrides: [coarse.camera.resolution=24]}\n")
    config = job_config(load_manifest(tmp_path / "m.yaml").jobs[0])
    assert (config.prompt, config.seed, config.preset, config.stages[-1].steps) == ("a red cube", 4, "toy", 12)
    assert config.stages[0].camera.resolution == 24
    export = config.export
    assert (tuple(export.formats), export.max_triangles, export.texture_size, export.profile, export.lods) == \
        (("glb", "usdz"), 1500, 128, "mobile", 1)


def test_every_bad_row_is_reported_with_its_line_and_the_good_rows_remain(tmp_path):
    rows = [
        {"prompt": "a red cube", "seed": 1},                                   # 1 good
        {"prompt": "a green torus", "image": "torus.png"},                     # 2 unsupported input
        {"prompt": "a red cube", "seed": 1},                                   # 3 duplicate id
        {"prompt": "a blue cone", "overrides": ["guidance.guidanse_scale=3"]},  # 4 misspelt override
        {"prompt": "a wooden barrel"},                                         # 5 unknown to the embedded prior
        {"prompt": "a gray cube", "texture_size": 300},                        # 6 not a power of two
        {"prompt": "a gray torus", "sed": 3},                                  # 7 misspelt field
        {"prompt": "a white cube", "steps": "many"},                           # 8 not a number
        {"prompt": "a white cone", "adapters": ["my-lora"]},                   # 9 missing adapter folder
        {"prompt": "a gray sphere", "style_reference": "ref.png"},             # 10 missing style reference
        {"prompt": "a gray cone", "mesh": "base.obj"},                         # 11 unsupported mesh input
        {"seed": 3},                                                           # 12 no prompt
        {"prompt": "a purple cube", "preset": "nope"},                         # 13 unknown preset
        {"prompt": "a blue sphere", "seed": 2},                                # 14 good
        {"prompt": "a blue cube", "id": "../escape"},                          # 15 not a folder name
    ]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    manifest = validate(load_manifest(tmp_path / "m.jsonl"))
    assert [job.line for job in manifest.jobs] == [1, 14]
    problems = {p.line: p.message for p in manifest.problems}
    assert sorted(problems) == [*range(2, 14), 15]
    assert "'image' is not supported yet" in problems[2] and "image prompts" in problems[2]
    assert "already used by line 1" in problems[3]
    assert "did you mean 'guidance.guidance_scale'" in problems[4]
    assert "cannot draw 'a wooden barrel'" in problems[5]
    assert "--texture-size 300" in problems[6]
    assert "unknown field 'sed'; did you mean 'seed'?" in problems[7]
    assert "'steps' must be a whole number" in problems[8]
    assert f"'adapters' folder {tmp_path / 'my-lora'} does not exist" in problems[9]
    assert f"'style_reference' {tmp_path / 'ref.png'} does not exist" in problems[10]
    assert "'mesh' is not supported yet" in problems[11]
    assert "no prompt" in problems[12]
    assert "nope" in problems[13]
    assert "job id '../escape' cannot be used in file names" in problems[15]
    text = manifest.describe_problems().splitlines()
    assert len(text) == 13 and text[0].startswith(f"{tmp_path / 'm.jsonl'}:2: ")


@pytest.mark.parametrize(("name", "content", "needle"), [
    ("m.jsonl", '{"prompt": "a red cube"}\n{"prompt": \n', "m.jsonl:2: not JSON"),
    ("m.yaml", "jobs: [a, b\n", "not YAML"),
    ("m.yaml", "jobz: []\n", "unknown key 'jobz'"),
    ("m.csv", "# defaults: [1\nprompt\na red cube\n", "not YAML"),
    ("m.csv", "# defaults:\n#   sed: 3\nprompt\na red cube\n", "defaults: unknown field 'sed'"),
    ("m.txt", "a red cube\n", "unknown manifest type '.txt'"),
    ("m.jsonl", "\n", "has no jobs"),
])
def test_a_manifest_that_does_not_parse_is_one_error(tmp_path, name, content, needle):
    (tmp_path / name).write_text(content)
    with pytest.raises(BatchError) as caught:
        load_manifest(tmp_path / name)
    assert needle in str(caught.value) and "\n" not in str(caught.value)


def test_a_csv_row_with_the_wrong_number_of_cells_is_a_row_problem(tmp_path):
    (tmp_path / "m.csv").write_text("prompt,seed\na red cube,1\na blue cube,2,extra\n")
    manifest = load_manifest(tmp_path / "m.csv")
    assert [j.line for j in manifest.jobs] == [2]
    assert manifest.problems[0].line == 3 and "3 cells" in manifest.problems[0].message


def test_a_style_reference_in_the_defaults_gives_every_job_the_same_style(tmp_path):
    from PIL import Image

    (tmp_path / "refs").mkdir()
    Image.new("RGB", (24, 24), (240, 128, 25)).save(tmp_path / "refs" / "orange.png")
    manifest = tmp_path / "m.yaml"
    manifest.write_text("defaults:\n  style_reference: refs/orange.png\njobs:\n  - prompt: a red cube\n"
                        "  - prompt: a blue cone\n  - prompt: a gray torus\n    style_reference: refs/none.png\n"
                        "  - prompt: a green cone\n    overrides: ['guidance.conditioners=[]']\n")
    parsed = validate(load_manifest(manifest))
    assert [job.prompt for job in parsed.jobs] == ["a red cube", "a blue cone"]
    for job in parsed.jobs:
        spec, = job_config(job).stages[0].guidance["conditioners"]
        assert spec == {"name": "style_aligned", "image": str((tmp_path / "refs" / "orange.png").resolve())}
    first, second = sorted(parsed.problems, key=lambda p: p.line)
    assert "refs/none.png does not exist" in first.message
    assert "sets guidance.conditioners" in second.message


def test_a_job_without_a_style_reference_keeps_the_fingerprint_older_ledgers_hold(tmp_path):
    (tmp_path / "m.yaml").write_text("- {prompt: a red cube, seed: 1}\n")
    job = load_manifest(tmp_path / "m.yaml").jobs[0]
    assert "style_reference" not in json.loads(job.fingerprint())
    assert "adapters" not in json.loads(job.fingerprint())


def test_a_rows_adapters_join_the_defaults_the_style_and_batch_adapter_in_one_conditioner_list(tmp_path):
    from dataclasses import replace

    from PIL import Image

    from dreamsmith.engine.batch.manifest import JobSpec

    for name in ("pink", "style", "extra"):
        (tmp_path / "adapters" / name).mkdir(parents=True)
    Image.new("RGB", (24, 24), (240, 128, 25)).save(tmp_path / "orange.png")
    folder = {name: str((tmp_path / "adapters" / name).resolve()) for name in ("pink", "style", "extra")}
    (tmp_path / "m.yaml").write_text(
        "defaults:\n  adapters: [adapters/pink]\njobs:\n"
        "  - prompt: a red cube\n"
        "  - prompt: a blue cone\n    style_reference: orange.png\n"
        "    adapters: ['adapters/style:0.5', {path: adapters/extra, scale: 0.2, reward_scale: 1}]\n")
    (tmp_path / "m.csv").write_text("prompt,adapters\na red cube,adapters/pink;adapters/style:0.5\n")
    cube, cone = load_manifest(tmp_path / "m.yaml").jobs
    assert cube.adapters == ({"path": folder["pink"], "scale": 1.0, "reward_scale": 0.0},)
    from_csv, = load_manifest(tmp_path / "m.csv").jobs
    assert [(a["path"], a["scale"]) for a in from_csv.adapters] == [(folder["pink"], 1.0), (folder["style"], 0.5)]
    cli_adapter = 'guidance.conditioners=[{"name": "adapter", "path": "/elsewhere", "scale": 1.0, "reward_scale": 0}]'
    cone = replace(cone, overrides=(*cone.overrides, cli_adapter))  # what `batch --adapter` appends
    assert JobSpec.from_dict(cone.to_dict()) == cone  # through the ledger and to a worker
    specs = job_config(cone).stages[0].guidance["conditioners"]
    assert [(spec["name"], spec.get("path"), spec.get("scale")) for spec in specs] == [
        ("adapter", folder["pink"], 1.0), ("adapter", folder["style"], 0.5), ("adapter", folder["extra"], 0.2),
        ("style_aligned", None, None), ("adapter", "/elsewhere", 1.0)]
    assert specs[2]["reward_scale"] == 1.0


@pytest.mark.parametrize(("row", "message"), [
    ("{prompt: a red cube, adapters: [none]}", "'adapters' folder {tmp}/none does not exist"),
    ("{prompt: a red cube, adapters: ['pink:x2']}", "'adapters' folder {tmp}/pink:x2 does not exist"),
    ("{prompt: a red cube, adapters: [{path: pink, scale: big}]}", "'adapters' scale of pink must be a number"),
    ("{prompt: a red cube, adapters: [{path: pink, weight: 2}]}", "unknown key 'weight'; use path, scale"),
    ("{prompt: a red cube, adapters: pink.2}", "'adapters' folder {tmp}/pink.2 does not exist"),
    ("{prompt: a red cube, adapters: {pink: 1}}", "'adapters' must be a list of adapter folders"),
    ("{prompt: a red cube, adapters: [pink], overrides: ['guidance.conditioners=[]']}",
     "remove the row's guidance.conditioners override or the adapters"),
])
def test_bad_adapters_are_refused_by_line_before_anything_runs(tmp_path, row, message):
    (tmp_path / "pink").mkdir()
    (tmp_path / "m.yaml").write_text(f"- {{prompt: a blue cone}}\n- {row}\n")
    manifest = load_manifest(tmp_path / "m.yaml")
    assert [job.line for job in manifest.jobs] == [1]
    text = manifest.describe_problems()
    assert text.startswith(f"{tmp_path / 'm.yaml'}:2: ") and message.format(tmp=tmp_path) in text
    assert len(text.splitlines()) == 1
