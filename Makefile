# credbroker developer commands. `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint protos check-protos bench clean lock

install: $(STAMP)

# The server, its dev tools and the SDK, at the versions pinned in constraints.txt.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[server,dev]'
	touch $(STAMP)

# Re-pins every dependency (server and dev) to the newest versions pyproject.toml allows.
lock: install
	$(BIN)/pip-compile --quiet --upgrade --strip-extras --extra server --extra dev \
	  --no-emit-index-url --no-emit-trusted-host --no-emit-find-links \
	  --output-file constraints.txt pyproject.toml

run: install
	$(BIN)/credbroker serve --dev

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy credbroker tests
	BUF=$(abspath $(BIN))/buf BUF_PYTHON=$(abspath $(BIN))/python bash scripts/buf.sh

protos: install
	PATH=$(BIN):$$PATH $(BIN)/python -m grpc_tools.protoc -I protos -I "$$($(BIN)/python -c 'import google.api, os; print(os.path.dirname(os.path.dirname(google.api.__path__[0])))')" \
	  --python_out=. --grpc_python_out=. --mypy_out=. --mypy_grpc_out=async_only:. \
	  protos/credbroker/v1/*.proto
	rm -f credbroker/v1/resources_pb2_grpc.py credbroker/v1/resources_pb2_grpc.pyi  # no services in resources.proto
	rm -f credbroker/v1/events_pb2_grpc.py credbroker/v1/events_pb2_grpc.pyi  # nor in events.proto

check-protos: protos
	git diff --exit-code -- credbroker/v1
	test -z "$$(git status --porcelain -- credbroker/v1)"

bench: install
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .credbroker build *.egg-info
