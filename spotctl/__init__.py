"""spotctl: fleet manager and invoice-true cost ledger for LLM inference on spot GPUs."""

__version__ = "0.1.0"
