# Local stand-in for the prom/prometheus image docker-compose.yml names: Debian's
# prometheus package, same entrypoint contract (flags in `command`, data in /prometheus,
# runs as nobody).
ARG BASE_IMAGE=mobilenet-serve-base:bookworm
FROM ${BASE_IMAGE}
# hadolint ignore=DL3008 # a test stand-in: whatever bookworm ships
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /prometheus && chown nobody:nogroup /prometheus
USER nobody
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
