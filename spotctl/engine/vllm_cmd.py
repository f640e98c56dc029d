"""The vLLM server command line, built in one place from a tier.

Used by the SkyPilot task (``run``), the Hyperstack/local-cloud launch and the CPU test server.
The engine's API key goes through the environment (``VLLM_API_KEY``), never argv, so it does not
show in ``ps`` or in a dry run. Weights and compile caches live on the persistent storage
(``HF_HOME``, ``VLLM_CACHE_ROOT``), so a wake does not download again.
"""

from __future__ import annotations

from spotctl.config import TierConfig

QUANTIZATIONS = ("awq", "awq_marlin", "gptq", "gptq_marlin", "compressed-tensors", "fp8")
WEIGHTS_MOUNT = "/weights"
# How long `vllm serve` drains in-flight requests after SIGTERM before it stops (a hibernate or
# a down waits for this; systemd's TimeoutStopSec is set above it).
SHUTDOWN_TIMEOUT_S = 60


def vllm_command(tier: TierConfig, *, port: int | None = None, python: str = "python",
                 cache_root: str = WEIGHTS_MOUNT, extra: list[str] | None = None
                 ) -> tuple[list[str], dict[str, str]]:
    """argv and env for ``python -m vllm.entrypoints.openai.api_server`` serving ``tier``."""
    argv = [python, "-m", "vllm.entrypoints.openai.api_server",
            "--model", tier.model,
            "--served-model-name", tier.public_model,
            "--host", "0.0.0.0" if tier.exposure == "public" else "127.0.0.1",  # noqa: S104
            "--port", str(port or tier.engine_port)]
    if tier.quantization != "none":
        argv += ["--quantization", tier.quantization]
    if tier.tensor_parallel > 1:
        argv += ["--tensor-parallel-size", str(tier.tensor_parallel)]
    if tier.max_model_len:
        argv += ["--max-model-len", str(tier.max_model_len)]
    argv += ["--download-dir", f"{cache_root}/hf/hub"]
    argv += list(tier.vllm_args) + list(extra or [])
    env = {"HF_HOME": f"{cache_root}/hf", "VLLM_CACHE_ROOT": f"{cache_root}/vllm-cache",
           # torch.compile / inductor and triton kernels: compiled once, kept on the volume
           "TORCHINDUCTOR_CACHE_DIR": f"{cache_root}/torch-compile",
           "TRITON_CACHE_DIR": f"{cache_root}/triton-cache",
           "HF_HUB_ENABLE_HF_TRANSFER": "1"}
    if tier.api_key_env:
        # the value is provided at launch time from the named variable, never written here
        env["VLLM_API_KEY"] = f"${{{tier.api_key_env}}}"
    return argv, env


def serve_argv(tier: TierConfig, *, vllm: str = "vllm", cache_root: str = WEIGHTS_MOUNT,
               port: int | None = None) -> list[str]:
    """``vllm serve ...`` with the same arguments, draining for ``SHUTDOWN_TIMEOUT_S`` on stop:
    the command a systemd unit runs on a VM (Hyperstack, the local cloud)."""
    argv, _env = vllm_command(tier, port=port, cache_root=cache_root)
    return [vllm, "serve", *argv[3:], "--shutdown-timeout", str(SHUTDOWN_TIMEOUT_S)]


def shell_command(tier: TierConfig, **kw) -> str:
    """The command as one shell line (for a SkyPilot ``run`` section)."""
    import shlex

    argv, env = vllm_command(tier, **kw)
    exports = " ".join(f"{k}={v if v.startswith('${') else shlex.quote(v)}"
                       for k, v in sorted(env.items()))
    return f"{exports} exec {' '.join(shlex.quote(a) for a in argv)}"
