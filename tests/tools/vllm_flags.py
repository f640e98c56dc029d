"""Run inside .venv-vllm: every option of `vllm serve` as vLLM's own parser declares it.

Prints JSON {"vllm": version, "flags": {"--opt": {"value": bool, "choices": [...] | null}}}.
spotctl/engine/vllm_flags.json is this output; the local cloud's `vllm` shim checks the
arguments it is given against it, and tests/test_localcloud_vm.py (marked vllm) checks that the
stored file still matches the parser.
"""

import argparse
import json

import vllm

try:
    from vllm.entrypoints.openai.cli_args import make_arg_parser
except ImportError:  # vLLM moved it in later releases
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
from vllm.utils.argparse_utils import FlexibleArgumentParser

parser = make_arg_parser(FlexibleArgumentParser())
flags = {}
for action in parser._actions:
    if isinstance(action, argparse._HelpAction):
        continue
    takes = action.nargs != 0
    choices = sorted(map(str, action.choices)) if action.choices else None
    for opt in action.option_strings:
        flags[opt] = {"value": takes, "choices": choices}
if not flags["--quantization"]["choices"]:  # recent vLLM validates later, against this list
    from vllm.model_executor.layers import quantization as q

    flags["--quantization"]["choices"] = sorted(getattr(q, "QUANTIZATION_METHODS", []))
print(json.dumps({"vllm": vllm.__version__, "flags": dict(sorted(flags.items()))},
                 indent=0, sort_keys=True))
