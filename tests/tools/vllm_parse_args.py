"""Run inside .venv-vllm: parse each argv (JSON list on stdin) with vLLM's own parser.

Prints JSON: {"quantization_choices": [...], "results": [{"ok": bool, "error": str}]}.
"""

import contextlib
import io
import json
import sys

try:
    from vllm.entrypoints.openai.cli_args import make_arg_parser
except ImportError:  # vLLM moved it in later releases
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
from vllm.utils.argparse_utils import FlexibleArgumentParser

parser = make_arg_parser(FlexibleArgumentParser())
choices = []
for action in parser._actions:
    if "--quantization" in action.option_strings:
        choices = list(action.choices or [])
if not choices:  # recent vLLM validates later, against this list
    from vllm.model_executor.layers import quantization as q

    choices = list(getattr(q, "QUANTIZATION_METHODS", []))
results = []
for argv in json.load(sys.stdin):
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            parser.parse_args(argv)
        results.append({"ok": True, "error": ""})
    except SystemExit:
        results.append({"ok": False, "error": err.getvalue()[-500:]})
print(json.dumps({"quantization_choices": choices, "results": results}))
