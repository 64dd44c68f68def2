# The orders gRPC server. The same image renders Envoy's configuration for docker-compose
# (`python -m gateway render --variant compose`); Envoy itself runs from the official image.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app
COPY pyproject.toml ./
COPY gen ./gen
COPY server ./server
COPY gateway ./gateway
COPY envoy.yaml ./
RUN pip install . \
    && useradd --system --no-create-home orders \
    && mkdir -p /etc/envoy/rendered && chown orders /etc/envoy/rendered
USER orders

# Production unless told otherwise: Seed then needs ORDERS_ADMIN_TOKEN and refuses without it.
# In a container the server listens on every interface of the container's own network.
ENV ORDERS_ENV=production \
    ORDERS_GRPC_HOST=0.0.0.0 \
    ORDERS_GRPC_PORT=50051
EXPOSE 50051
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=6 \
    CMD ["python", "-m", "gateway", "health", "127.0.0.1:50051", "--service", "orders.v1.OrdersService"]
CMD ["python", "-m", "server", "serve"]
