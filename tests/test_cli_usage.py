"""The command line answers usage errors before it loads torch or diffusers, with one line each."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import json, sys
from dreamsmith.cli import main
sys.argv = ["dreamsmith", *json.loads(sys.argv[1])]
try:
    main()
except SystemExit as exit:
    code = exit.code
print(json.dumps({"code": code, "torch": "torch" in sys.modules, "diffusers": "diffusers" in sys.modules}))
"""


def run_cli(*args: str) -> tuple[dict, str]:
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args)], capture_output=True, text=True,
                          timeout=120)
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "a red cube", "--preset", "nope"], "unknown preset 'nope'"),
        (["generate", "a red cube", "--model", "/no/such/folder"], "model folder /no/such/folder does not exist"),
        (["generate", "a red cube", "camera.resoluton=32"], "did you mean 'camera.resolution'"),
        (["generate", "a red cube", "coarse.camera.resolution=abc"], "must be an integer, got 'abc'"),
        (["generate", "a red cube", "--memory-budget", "lots"], "--memory-budget must be a size"),
        (["generate", "a red cube", "--threads", "0"], "--threads must be >= 1"),
        (["generate", "a red cube", "--region", "top: a red cube"], "region 'top: a red cube': cannot read 'top'"),
        (["texture", "crate.glb", "a red cube", "--region", "y>0"], "region 'y>0' is not 'EXPRESSION: PROMPT'"),
    ],
)
def test_usage_errors_are_one_line_without_importing_torch_or_diffusers(args, message):
    result, stderr = run_cli(*args)
    assert result == {"code": 1, "torch": False, "diffusers": False}
    assert message in stderr and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) <= 2  # one message, wrapped at most once by the console


def test_a_config_that_cannot_fit_the_memory_budget_is_refused_naming_the_knobs():
    result, stderr = run_cli("generate", "a red cube", "--memory-budget", "512M", "camera.resolution=512")
    assert result["code"] == 1
    assert "more than the 0.5 GB memory budget" in stderr and "camera.resolution" in stderr
    assert "--memory-budget" in stderr
