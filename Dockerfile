# The orders gRPC server. The same image renders Envoy's configuration for docker-compose
# (`python -m gateway render --variant compose`); Envoy itself runs from the official image, so
# this one installs neither Envoy nor grpcurl (the `local` extra of pyproject.toml).
#
# tests/test_package.py replays this file without Docker: it copies what the COPY lines copy,
# runs the `pip` commands of the RUN lines in a fresh venv, and starts the server from that
# install as an unprivileged user. Keep each pip command a RUN of its own (or a `&&` part).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app
# The service's dependencies, pinned and hash-checked, in a layer of their own: rebuilt only
# when the lock changes.
COPY requirements.lock ./
RUN pip install --require-hashes --no-deps -r requirements.lock
# Then the project itself; what it needs is all installed above, so nothing else is resolved.
COPY pyproject.toml envoy.yaml ./
COPY gen ./gen
COPY server ./server
COPY gateway ./gateway
COPY orders_client ./orders_client
RUN pip install --no-deps .

# The server runs as `orders`, which may write only its data folder (the SQLite file when
# DATABASE_URL is unset, and the Unix socket of each server process) and the folder the
# rendered Envoy configuration goes to; /app and the installed code stay root's.
RUN useradd --system --no-create-home --home-dir /nonexistent orders \
    && mkdir -p /var/lib/orders /etc/envoy/rendered \
    && chown orders /var/lib/orders /etc/envoy/rendered
USER orders

# Production unless told otherwise: Seed then needs ORDERS_ADMIN_TOKEN and refuses without it.
# In a container the server listens on every interface of the container's own network.
ENV ORDERS_ENV=production \
    ORDERS_GRPC_HOST=0.0.0.0 \
    ORDERS_GRPC_PORT=50051 \
    ORDERS_DATA_DIR=/var/lib/orders \
    ORDERS_SOCKET_DIR=/var/lib/orders/sockets
EXPOSE 50051
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=6 \
    CMD ["python", "-m", "gateway", "health", "127.0.0.1:50051", "--service", "orders.v1.OrdersService"]
CMD ["python", "-m", "server", "serve"]
