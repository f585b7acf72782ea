# The transcriber worker. Building, running and deploying it: docs/deployment.md.
#   docker build -t transcriber .                                        # tiny.en baked in
#   docker build --build-arg LOCAL_WHISPER_MODEL=base.en -t transcriber:base.en .
#   docker run --init --env-file .env --stop-timeout 630 transcriber
# Stopping drains: on SIGTERM the worker takes no new rooms and keeps captioning its rooms
# until they end, for up to TRANSCRIBER_DRAIN_TIMEOUT (600 s), then closes them (up to 10 s
# more). Give it that long before SIGKILL: `docker run --stop-timeout`, Compose
# `stop_grace_period`, Kubernetes `terminationGracePeriodSeconds`. Docker's default is 10 s.
# tests/test_container.py lints this file and runs its install, download-files, start and
# HEALTHCHECK steps as written (no Docker engine needed).

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 VIRTUAL_ENV=/opt/venv
WORKDIR /src
COPY requirements.lock pyproject.toml README.md ./
COPY scripts/docker-install scripts/
COPY plugins plugins
COPY transcriber transcriber
RUN sh scripts/docker-install "$VIRTUAL_ENV"

FROM python:3.11-slim-bookworm
# A numeric, non-root user (Kubernetes runAsNonRoot can check it) that owns the model cache.
RUN groupadd --system --gid 10001 transcriber \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/transcriber \
        --shell /usr/sbin/nologin transcriber \
    && install -d -o 10001 -g 10001 /opt/models
COPY --from=build /opt/venv /opt/venv
# The Whisper model baked in for TRANSCRIBER_STT_PROVIDER=local: a faster-whisper model
# name (tiny.en, base.en, small, ...) or a CTranslate2 model directory.
ARG LOCAL_WHISPER_MODEL=tiny.en
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONFAULTHANDLER=1 \
    HF_HOME=/opt/models \
    LOCAL_WHISPER_MODEL=$LOCAL_WHISPER_MODEL \
    TRANSCRIBER_HTTP_PORT=8081
USER 10001:10001
WORKDIR /home/transcriber
# Models are fetched at build time (Silero VAD ships inside livekit-plugins-silero), as the
# user that reads them at run time; a container never downloads anything.
RUN python -m transcriber download-files
ENV HF_HUB_OFFLINE=1
# 8081: health (GET /) and status (GET /worker), TRANSCRIBER_HTTP_PORT.
# 9100: Prometheus metrics, TRANSCRIBER_METRICS_PORT.
EXPOSE 8081 9100
STOPSIGNAL SIGTERM
# GET / answers 200 while the worker runs, 503 once it gave up connecting to LiveKit.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/' % (os.environ.get('TRANSCRIBER_HTTP_PORT') or 8081), timeout=4)"]
CMD ["python", "-m", "transcriber", "start"]
