# wattmix worker / demo-feed image (used by docker-compose.yml).
#   docker build -t wattmix:0.1.0 .
#   docker run --rm wattmix:0.1.0 wattmix --help
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The source tree (.dockerignore keeps out .git, venvs, archives, tests); the packages are
# listed in [tool.setuptools] of pyproject.toml.
# No [broker] extra: production talks to Apache Kafka, not the embedded tansu broker.
COPY . .
RUN pip install . && wattmix --help > /dev/null

# Unprivileged user; /data holds the DuckDB archive (a named volume in docker-compose.yml
# inherits this ownership on first use).
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin wattmix \
    && mkdir -p /data && chown wattmix /data
USER wattmix
VOLUME ["/data"]

CMD ["wattmix", "--help"]
