# syntax=docker/dockerfile:1
# The ML backend (`labeler-backend`) on TensorFlow's GPU image; see README,
# "Deployment with docker compose and a GPU". Built by docker-compose.yml (service `backend`).
#
# Python: TensorFlow's 2.x GPU images are Ubuntu 22.04 with Python 3.11 from Ubuntu's archive
# (tensorflow/tensorflow#82529). The product needs 3.11 (pyproject: >=3.11,<3.12), so the apt step
# below asks for exactly what the Makefile asks for (`python3.11`, its venv module, make): a no-op
# where the image has them, and a build that fails loudly, not silently, on an image that has not.
FROM tensorflow/tensorflow:2.21.0-gpu

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends make python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/*

# Non-root; /data (the product's database), /models and the Label Studio files folder are
# created here so named volumes start out owned by this user.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin labeler \
    && install -d -o labeler -g labeler /app /data /models /label-studio/files

WORKDIR /app
COPY --chown=labeler:labeler . .
USER labeler

# The fresh-machine setup, verbatim: the Makefile's recipe (python3.11 -m venv .venv, then
# pip install -e '.[test,bench]'), so the image and the README cannot drift apart
# (tests/test_deployment.py checks it).
RUN make setup

# GPU only, on top of that setup: TensorFlow's own `and-cuda` extra (the CUDA / cuDNN wheels,
# nvidia-*) for exactly the TensorFlow version the setup installed; nothing else changes. The
# venv cannot use the base image's CUDA wheels, which live in the system site-packages.
RUN TF_VERSION="$(.venv/bin/pip show tensorflow | sed -n 's/^Version: //p')" \
    && test -n "$TF_VERSION" \
    && .venv/bin/pip install --quiet "tensorflow[and-cuda]==${TF_VERSION}"

ENV PATH=/app/.venv/bin:$PATH \
    BACKEND_HOST=0.0.0.0 \
    BACKEND_PORT=9090 \
    DATABASE_URL=sqlite:////data/labeler.db

EXPOSE 9090

HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["/app/.venv/bin/python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('BACKEND_PORT', '9090'), timeout=4)"]

CMD ["labeler-backend"]
