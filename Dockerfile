# Build: docker build -t transcriber .   Run: docker run --env-file .env transcriber
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY requirements.lock pyproject.toml README.md ./
COPY transcriber ./transcriber
COPY plugins ./plugins
RUN pip install -c requirements.lock . ./plugins/livekit-plugins-local-whisper

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 transcriber
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
USER transcriber
WORKDIR /home/transcriber
ARG LOCAL_WHISPER_MODEL=tiny.en
ENV LOCAL_WHISPER_MODEL=$LOCAL_WHISPER_MODEL TRANSCRIBER_HTTP_PORT=8081
# models are baked into the image: no download when a container starts
RUN python -m transcriber download-files
EXPOSE 8081
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8081/', timeout=2)"]
CMD ["python", "-m", "transcriber", "start"]
