# LLM-Backer. `make run` serves the chat; `make test` runs every test.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: install lock run test lint superuser worker beat bench bench-admin clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# requirements-dev.txt: every package pinned, the runtime set (requirements.txt,
# what the Docker image installs) and the tests' and tools'.
$(VENV)/.installed: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

# Pin again after changing requirements.in or requirements-dev.in (pip-tools, run from a venv of its own).
lock: | $(BIN)/python
	$(PYTHON) -m venv $(VENV)/piptools && $(VENV)/piptools/bin/pip install --quiet pip-tools
	for name in requirements requirements-dev; do \
	  $(VENV)/piptools/bin/pip-compile --quiet --strip-extras --allow-unsafe --no-emit-index-url \
	    --no-emit-find-links -o $$name.txt $$name.in; done

# The settings fail closed (DEBUG off: SECRET_KEY required, HTTPS only); these
# development targets turn DEBUG on unless the environment says otherwise.
run worker beat superuser: export DEBUG ?= true

run: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py collectstatic --noinput --verbosity 0
	$(BIN)/python manage.py serveinfo --url http://$(HOST):$(PORT)
	$(BIN)/daphne -b $(HOST) -p $(PORT) llmbacker.asgi:application

# Coverage of the code the test process runs (.coveragerc), reported at the end.
test: install
	$(BIN)/python -m pytest -c tests/pytest.ini tests --cov --cov-report=term $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m tests.bench_turns $(BENCH_ARGS)

bench-admin: install
	$(BIN)/python -m tests.bench_admin $(BENCH_ARGS)

.PHONY: bench-load
bench-load: install
	$(BIN)/python -m tests.bench_load $(BENCH_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	DEBUG=true $(BIN)/mypy llmbacker chat audit tests manage.py

superuser: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py createsuperuser

# A worker or beat without a broker would talk to Celery's default, amqp://localhost.
BROKER_REQUIRED = $(BIN)/python -c 'import sys; from llmbacker.celery import BROKER_MISSING, app; \
	app.conf.broker_url or sys.exit("make $@: " + BROKER_MISSING)'

worker: install
	@$(BROKER_REQUIRED)
	$(BIN)/celery -A llmbacker worker --loglevel=INFO

beat: install
	@$(BROKER_REQUIRED)
	$(BIN)/celery -A llmbacker beat --loglevel=INFO

clean:
	rm -rf $(VENV) staticfiles test-artifacts test-db*.sqlite3 .pytest_cache .ruff_cache
