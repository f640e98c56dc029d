"""The local cloud's `vllm` shim checks arguments against vLLM's own option list: that list
(spotctl/engine/vllm_flags.json) is checked here against the real vLLM parser (.venv-vllm), and
spotctl's `vllm serve` command line passes vLLM's own parser."""

from __future__ import annotations

import json
import subprocess
from importlib.resources import files

import pytest

from spotctl.config import parse_config
from spotctl.engine.vllm_cmd import serve_argv
from tests.fixtures_vllm import ROOT, require_vllm

pytestmark = pytest.mark.vllm


def test_the_shims_option_list_is_vllms_own():
    py = require_vllm()
    out = subprocess.run([str(py), str(ROOT / "tests/tools/vllm_flags.py")],
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    live = json.loads(out.stdout)
    stored = json.loads((files("spotctl.engine") / "vllm_flags.json").read_text())
    assert stored == live, ("spotctl/engine/vllm_flags.json is stale: regenerate it with "
                            ".venv-vllm/bin/python tests/tools/vllm_flags.py")


def test_the_serve_command_parses_with_vllms_parser(tmp_path):
    py = require_vllm()
    cfg = parse_config('[[tiers]]\nname = "t"\nmodel = "org/m"\nquantization = "awq_marlin"\n'
                       'tensor_parallel = 2\nmax_model_len = 4096\n'
                       'vllm_args = ["--enable-prefix-caching"]\n', tmp_path / "x.toml")
    argv = serve_argv(cfg.tiers[0])
    assert argv[:2] == ["vllm", "serve"] and "--shutdown-timeout" in argv
    out = subprocess.run([str(py), str(ROOT / "tests/tools/vllm_parse_args.py")],
                         input=json.dumps([argv[2:]]), capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert all(r["ok"] for r in result["results"]), result["results"]
