# Local stand-in for the nginx image docker-compose.yml names (no registry here):
# Debian's nginx on the tests' local base. Same contract as nginx:alpine for the
# compose file: config at /etc/nginx/nginx.conf, `wget` for the health check.
ARG BASE_IMAGE=mobilenet-serve-base:bookworm
FROM ${BASE_IMAGE}
# hadolint ignore=DL3008 # a test stand-in: whatever bookworm ships
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx-light wget \
    && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/* \
    && ln -sf /dev/stderr /var/log/nginx/error.log
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
