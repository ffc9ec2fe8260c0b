# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
FLASK  := $(BIN)/flask --app referral_service:create_app
PORT   ?= 8000
export PORT

.PHONY: run serve test test-fast lint bench install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $@

install: $(VENV)/.installed

## make run: install, migrate, load the demo county once, start the scheduler, serve on http://127.0.0.1:$(PORT)
run: install
	$(FLASK) db upgrade
	$(FLASK) seed-demo
	$(FLASK) scheduler run & scheduler=$$!; \
	trap 'kill $$scheduler 2>/dev/null; wait $$scheduler' EXIT; \
	$(BIN)/gunicorn --bind 127.0.0.1:$(PORT) --workers 2 --threads 4 --timeout 120 --limit-request-line 8190 \
		--reuse-port --access-logfile - wsgi:app

## make test: install and run the whole suite (SQLite, and PostgreSQL when it answers)
test: install
	$(BIN)/pybabel -q compile -d referral_service/translations
	$(BIN)/pytest -n 2 -p no:cacheprovider

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy referral_service
	$(BIN)/lint-imports

bench: install
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) instance .pytest_cache .mypy_cache .ruff_cache
