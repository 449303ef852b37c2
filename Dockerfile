FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HL7GW_DATA_DIR=/data \
    HL7GW_MLLP_HOST=0.0.0.0 \
    HL7GW_HTTP_HOST=0.0.0.0

WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY mappings ./mappings
# Editable: the shipped mappings/ stay beside the package, where the converter reads them.
RUN pip install --no-cache-dir -e ".[postgres]" \
    && useradd --system --home /data hl7gw \
    && mkdir -p /data && chown hl7gw /data

USER hl7gw
VOLUME ["/data"]
EXPOSE 2575 8080
STOPSIGNAL SIGTERM
CMD ["hl7gw", "run"]
