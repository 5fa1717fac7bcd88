# Whazing Gateway: mitmproxy (reverse mode) + the gateway addon, in front of an unmodified Whazing.
#   docker build -t whazing-gateway .
#   docker run --rm -e WHAZING_UPSTREAM=http://backend:3000 -v gw-data:/app/data \
#     -v "$PWD/rules:/app/rules:ro" -p 8080:8080 whazing-gateway
# Ports: 8080 proxy (Whazing's REST + socket.io), 9090 /metrics /healthz /readyz, 8081 flow viewer.

FROM python:3.13-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# The context is filtered by .dockerignore (an allow-list): package sources and metadata only.
COPY . /src
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --upgrade pip \
 && /opt/venv/bin/pip install .

FROM python:3.13-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/app
# A fixed, unprivileged uid/gid so volume ownership is predictable (chown 10001 a bind mount).
RUN groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid gateway --home-dir /app --no-create-home \
      --shell /usr/sbin/nologin gateway
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY deploy/gateway.docker.yaml /app/gateway.yaml
RUN mkdir -p /app/data /app/rules /app/.mitmproxy \
 && chown -R gateway:gateway /app/data /app/rules /app/.mitmproxy \
 && chmod 0444 /app/gateway.yaml
USER gateway
VOLUME ["/app/data", "/app/rules"]
EXPOSE 8080 9090 8081
# No curl in slim images: probe /healthz with the Python that is already there.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('WGW_METRICS_PORT', '9090'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["whazing-gateway"]
CMD ["run", "--config", "/app/gateway.yaml"]
