"""The vLLM command line against vLLM's own parser, and readiness against a real vLLM server."""

from __future__ import annotations

import json
import subprocess

import pytest

from spotctl.clock import ManualClock
from spotctl.config import parse_config
from spotctl.engine.readiness import NotReady, wait_ready
from spotctl.engine.vllm_cmd import QUANTIZATIONS, vllm_command
from tests.fixtures_vllm import ROOT, require_vllm

pytestmark = pytest.mark.vllm


def test_command_lines_parse_with_vllms_own_parser(tmp_path):
    py = require_vllm()
    argvs, quants = [], ["none", *QUANTIZATIONS]
    for q in quants:
        cfg = parse_config(
            f'[[tiers]]\nname = "t"\nmodel = "org/m"\nquantization = "{q}"\ntensor_parallel = 2\n'
            'max_model_len = 4096\nvllm_args = ["--enable-prefix-caching"]\n',
            tmp_path / "spotctl.toml")
        argv, _env = vllm_command(cfg.tiers[0])
        assert argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
        assert "VLLM_API_KEY" not in " ".join(argv)
        argvs.append(argv[3:])
    out = subprocess.run([str(py), str(ROOT / "tests/tools/vllm_parse_args.py")],
                         input=json.dumps(argvs), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert all(r["ok"] for r in result["results"]), result["results"]
    assert set(QUANTIZATIONS) <= set(result["quantization_choices"])


def test_readiness_is_a_real_completion(vllm_engine):
    report = wait_ready(vllm_engine.base_url, vllm_engine.api_key, "tiny", 60, ManualClock())
    assert "first_completion" in report.phases
    with pytest.raises(NotReady):  # a wrong key: /health answers, completions do not
        wait_ready(vllm_engine.base_url, "wrong-key", "tiny", 0.5, ManualClock(),
                   max_real_s=1.0)
