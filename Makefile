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

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

superuser: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py createsuperuser

worker: install
	$(BIN)/celery -A llmbacker worker --loglevel=INFO

beat: install
	$(BIN)/celery -A llmbacker beat --loglevel=INFO

clean:
	rm -rf $(VENV) staticfiles test-artifacts test-db*.sqlite3 .pytest_cache .ruff_cache
