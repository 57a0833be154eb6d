# relayguard: `make run` and `make test` are all a newcomer needs (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-pg lint fuzz bench certs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

var/dev-cert.pem:
	mkdir -p var
	$(BIN)/python -m relayguard.devcert var/dev-cert.pem var/dev-key.pem

certs: $(STAMP) var/dev-cert.pem

# The embedded default: SMTP on 127.0.0.1:2525, SQLite under var/, the web UI on 127.0.0.1:8025,
# and, with no upstream configured, a capture mailbox instead of real delivery (dev mode).
run: $(STAMP) var/dev-cert.pem
	RELAYGUARD_SMTP__TLS_CERT=$${RELAYGUARD_SMTP__TLS_CERT:-var/dev-cert.pem} \
	RELAYGUARD_SMTP__TLS_KEY=$${RELAYGUARD_SMTP__TLS_KEY:-var/dev-key.pem} \
	RELAYGUARD_LOG__FORMAT=$${RELAYGUARD_LOG__FORMAT:-console} \
	$(BIN)/relayguard serve

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/run.py

fuzz: $(STAMP)
	$(BIN)/python tests/security/fuzz_parse.py --minutes $${FUZZ_MINUTES:-10}

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
