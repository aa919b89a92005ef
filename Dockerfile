# syntax=docker/dockerfile:1
# The ML backend (`labeler-backend`) with GPU support; see README, "Deployment with docker compose
# and a GPU". Built by docker-compose.yml (service `backend`).
#
# One Python, one install, TensorFlow once: Python 3.11 (pyproject: >=3.11,<3.12) from the official
# slim image, and the product with only what the backend needs:
#   gpu         TensorFlow with its own `and-cuda` extra: CUDA and cuDNN as pip wheels, so the host
#               needs just the NVIDIA driver and the Container Toolkit (which mounts the driver in)
#   savedmodel  tf-keras, for a MODEL_PATH that is a SavedModel folder
# No test or bench extra, no base image's TensorFlow beside the one pip installs.

# --- build: the virtual environment, from the sources -------------------------------------------
FROM python:3.11-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# what the install reads: pyproject.toml, the files it names, the five packages
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY backend backend
COPY db db
COPY explain explain
COPY labeler labeler
COPY models models
RUN python3.11 -m venv /app/.venv \
    && /app/.venv/bin/pip install --quiet '.[gpu,savedmodel]'

# --- the image: that environment and nothing of the build ---------------------------------------
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1

# Non-root; /data (the product's database), /models and the Label Studio files folder are
# created here so named volumes start out owned by this user. The installed code stays root's.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin labeler \
    && install -d -o labeler -g labeler /data /models /label-studio/files

COPY --from=build /app/.venv /app/.venv
WORKDIR /app
USER labeler

ENV PATH=/app/.venv/bin:$PATH \
    BACKEND_HOST=0.0.0.0 \
    BACKEND_PORT=9090 \
    DATABASE_URL=sqlite:////data/labeler.db

EXPOSE 9090

HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["/app/.venv/bin/python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('BACKEND_PORT', '9090'), timeout=4)"]

CMD ["labeler-backend"]
