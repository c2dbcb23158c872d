# LLM-Backer. `make run` serves the chat; `make test` runs every test.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: install run test lint superuser worker beat bench bench-admin clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

install: $(VENV)/.installed

# The settings fail closed (DEBUG off: SECRET_KEY required, HTTPS only); these
# development targets turn DEBUG on unless the environment says otherwise.
run worker beat superuser: export DEBUG ?= true

run: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py collectstatic --noinput --verbosity 0
	$(BIN)/python manage.py serveinfo --url http://$(HOST):$(PORT)
	$(BIN)/daphne -b $(HOST) -p $(PORT) llmbacker.asgi:application

test: install
	$(BIN)/python -m pytest -c tests/pytest.ini tests $(PYTEST_ARGS)

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
