"""spotctl: fleet manager and invoice-true cost ledger for LLM inference on spot GPUs."""

__version__ = "0.1.0"

import os as _os

# spotctl uses no pydantic plugins; scanning installed packages for them costs ~20 ms of start-up.
_os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
