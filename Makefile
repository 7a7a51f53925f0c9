# The README's two commands: `make serve` and `make test`. Each sets up what it needs first.
.PHONY: setup serve test lint fmt unit bench

setup:
	scripts/setup.sh

serve: setup
	.venv/bin/roomcast serve --host 127.0.0.1 --port 8000 --broker memory://

lint: setup
	.venv/bin/ruff format --check .
	.venv/bin/ruff check .
	.venv/bin/mypy

fmt: setup
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

# Every quality gate, exactly as CI runs it.
test:
	scripts/setup.sh --test
	.venv/bin/ruff format --check .
	.venv/bin/ruff check .
	.venv/bin/mypy
	.venv/bin/python -m pytest -p no:cacheprovider -q

bench: setup
	bench/run.sh
