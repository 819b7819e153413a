# The image of every component of `tailings compile`'s pipeline (Vertex AI / Kubeflow), and of
# the Dataflow workers its Beam steps run on (--sdk_container_image). Build and push:
#   docker build -t REGION-docker.pkg.dev/PROJECT/REPO/tailings:TAG .
#   docker push REGION-docker.pkg.dev/PROJECT/REPO/tailings:TAG
# Not built on the machines this project is developed on (no container engine there);
# tests/test_dockerfile.py checks it statically.
#
# Base: Apache Beam's Python 3.10 SDK image of the Beam version in uv.lock. Dataflow starts a
# custom container through its /opt/apache/beam/boot entrypoint, and TFX 1.16 needs Python 3.10.
# Pinned by version; pin the digest too once you have pulled it (`docker inspect`).
FROM apache/beam_python3.10_sdk:2.61.0

# uv, the version the project's `make setup` uses, from its official image.
COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /usr/local/bin/uv

ENV UV_PROJECT_ENVIRONMENT=/opt/tailings/.venv \
    UV_PYTHON_DOWNLOADS=never \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    TF_USE_LEGACY_KERAS=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    PYTHONUNBUFFERED=1 \
    RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1

WORKDIR /opt/tailings

# As the README's set-up (`make setup`): a venv with pip (TFX pip-installs module files), then
# exactly uv.lock. Dependencies first, so a code change does not re-install them.
COPY pyproject.toml uv.lock ./
RUN uv venv --seed --python /usr/local/bin/python3.10 "$UV_PROJECT_ENVIRONMENT" \
    && uv sync --frozen --no-dev --no-install-project

COPY README.md ./
COPY tailings ./tailings
COPY data ./data
COPY components ./components
COPY pipeline ./pipeline
COPY serving ./serving
COPY schemas ./schemas
RUN uv sync --frozen --no-dev --no-editable \
    && "$UV_PROJECT_ENVIRONMENT/bin/python" -c \
    "import tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor, components.example_gen"

# The compiled spec runs `python -m tfx.orchestration.kubeflow.v2.container.
# kubeflow_v2_run_executor` (its container command): `python` is this venv's. Beam's boot
# starts Dataflow's SDK workers with the same `python` (RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT:
# in this venv, not in a fresh one of its own that would not see the project).
ENV PATH=/opt/tailings/.venv/bin:$PATH

# Not root. The venv stays root's and read-only: a compiled pipeline names its module
# functions by import path, so TFX has no module wheel to pip-install at run time.
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin tailings
USER 10001

ENTRYPOINT ["/opt/apache/beam/boot"]
