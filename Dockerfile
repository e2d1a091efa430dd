# One image for every node of a topology; `docker-compose.yml` runs it once per node with
# `serve --node NAME --topology /etc/idres/topology.toml --data /data`, the topology file mounted by
# compose (deploy/topology-compose.toml), so a changed topology needs no new image.
# Build: docker build -t idres .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# An unprivileged user that owns the data directory. /data is created (and chowned) before the
# VOLUME line so a fresh named volume is initialised with that ownership.
RUN groupadd --system --gid 10001 idres \
    && useradd --system --uid 10001 --gid idres --home-dir /home/idres --create-home --shell /usr/sbin/nologin idres \
    && mkdir -p /data \
    && chown idres:idres /data

# setuptools needs the sources to build the package, so the whole (.dockerignore-filtered) tree is
# copied and installed in one step: runtime dependencies only, no test extras.
WORKDIR /src
COPY . .
RUN pip install . \
    && rm -rf /src

WORKDIR /home/idres
USER idres

# The nodes' SQLite files, logs and the operator-secrets file.
VOLUME ["/data"]

# No HEALTHCHECK here: the port depends on which node the container runs, so each compose service
# declares its own (GET http://HOST:PORT/healthz).
ENTRYPOINT ["idres"]
CMD ["--help"]
