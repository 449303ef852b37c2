# Build every wheel (the gateway's, with its mappings inside, and its dependencies') in one stage,
# install them without an index in the next: the image holds no source tree and no build tools.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY gateway ./gateway
COPY mappings ./mappings
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[postgres]"

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HL7GW_DATA_DIR=/data \
    HL7GW_MLLP_HOST=0.0.0.0 \
    HL7GW_HTTP_HOST=0.0.0.0
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "hl7gw[postgres]" \
    && rm -rf /wheels \
    && useradd --system --home /data hl7gw \
    && mkdir -p /data && chown hl7gw /data
USER hl7gw
WORKDIR /data
VOLUME ["/data"]
EXPOSE 2575 8080
STOPSIGNAL SIGTERM
# /health answers 200 while the API serves and the database answers (no token needed).
HEALTHCHECK --interval=30s --timeout=5s --start-period=90s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('HL7GW_HTTP_PORT', '8080') + '/health', timeout=4)"
CMD ["hl7gw", "run"]
