# The README's two commands: `make serve` and `make test`. Each sets up what it needs first.
.PHONY: setup dev serve test lint fmt unit bench compat docs

# Runtime dependencies only: serving the demo needs nothing more.
setup:
	scripts/setup.sh

dev:
	scripts/setup.sh --dev

serve: setup
	.venv/bin/roomcast serve --host 127.0.0.1 --port 8000 --broker memory:// --on-duplicate share \
		--config examples/roomcast.toml

lint: dev
	.venv/bin/ruff format --check .
	.venv/bin/ruff check .
	.venv/bin/mypy

fmt: dev
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

# Every quality gate, exactly as CI runs it. The suite mostly waits on sockets and processes,
# so three workers (each test file on one of them) finish it in about a third of the time.
test:
	scripts/setup.sh --test
	.venv/bin/ruff format --check .
	.venv/bin/ruff check .
	.venv/bin/mypy
	.venv/bin/mkdocs build --strict --quiet
	.venv/bin/python -m pytest -p no:cacheprovider -q -n 3 --dist loadfile
	.venv/bin/python scripts/compat.py

# The documentation site with the API reference from the docstrings, in site/.
docs: dev
	.venv/bin/mkdocs build --strict

# The embedding tests in fresh virtualenvs beside the oldest and the newest FastAPI supported.
compat: dev
	.venv/bin/python scripts/compat.py

bench: dev
	bench/run.sh
