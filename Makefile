# Two commands for a newcomer: `make demo` and `make test`. Both create .venv and install the
# exact lock on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum requirements.txt | cut -d' ' -f1)

.PHONY: demo test crash-test lint bench airflow sandbox-up sandbox-down install lock

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-deps -r requirements.txt
	# The project itself, editable: registers our Airflow provider (the Heroku Connect connection type).
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m pip check
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	$(PY) -m sandbox.demo

# The UI test drives Debian's Chromium (Playwright never downloads a browser here).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

# The Celery test (tests/test_celery.py) and its benchmark start Debian's redis-server as the broker.
REDIS_SERVER := /usr/bin/redis-server
$(REDIS_SERVER):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server

test: $(STAMP) $(CHROMIUM) $(REDIS_SERVER)
	$(PY) -m ruff check .
	$(PY) -m pytest

# Every crash point for every crash policy (tests/crash); `make test` runs a reduced set of them.
crash-test: $(STAMP)
	CRASH_MATRIX=full $(PY) -m pytest tests/crash

# Airflow's UI on the sandbox, every policy visible (foreground; Ctrl-C stops it).
airflow: $(STAMP)
	$(PY) -m sandbox.standalone

lint: $(STAMP)
	$(PY) -m ruff check .

bench: $(STAMP) $(REDIS_SERVER)
	$(PY) -m pytest bench --benchmark-only -s

sandbox-up: $(STAMP)
	$(PY) -m sandbox up

sandbox-down: $(STAMP)
	$(PY) -m sandbox down

# Re-resolve the lock from requirements.in (needs the package index).
lock:
	$(PYTHON) -m venv /tmp/retention-lock && /tmp/retention-lock/bin/pip install --quiet -r requirements.in
	{ echo "# Exact lock for Python 3.11 (Airflow cannot fetch its constraints file here). Regenerate with"; \
	  echo "# 'make lock' after changing requirements.in."; /tmp/retention-lock/bin/pip freeze; } > requirements.txt
