# syntax=docker/dockerfile:1.7
#
# redtail's container image: a static-enough binary on distroless.
#
#   docker build -t redtail .
#   docker run --rm -e OTR_MONGO_URL=... -e OTR_REDIS_URL=... -p 9000:9000 redtail
#
# Stage 1 compiles with the official Rust image (Debian bookworm, so the
# binary links against the same glibc as the runtime image). BuildKit cache
# mounts keep the crate registry and target directory between builds, so a
# source-only change recompiles redtail alone.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p redtail --bin redtail \
    && install -D -m 0755 target/release/redtail /out/redtail

# Stage 2 only borrows a statically linked busybox: the runtime image has no
# shell, curl or wget, and the HEALTHCHECK needs an HTTP client. `wget`
# exits non-zero on a 500 from /healthz, which is all Docker needs.
FROM busybox:1.37-musl AS probe

# Stage 3: distroless "cc" = glibc, libgcc, CA certificates and a passwd
# entry for the unprivileged user 65532, nothing else (about 25 MB). redtail
# uses rustls, so no OpenSSL is needed.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/redtail /usr/local/bin/redtail
COPY --from=probe /bin/busybox /usr/local/bin/busybox
USER 65532:65532
# /healthz, /readyz, /metrics and the denylist API (OTR_HTTP_SERVER_ADDR).
EXPOSE 9000
# Liveness for plain Docker and Compose (Kubernetes uses its own probes).
# It assumes the default OTR_HTTP_SERVER_ADDR port; override HEALTHCHECK
# in compose when you move it.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/busybox", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:9000/healthz"]
# SIGTERM starts the drain (OTR_SHUTDOWN_GRACE, 30 s by default): give
# `docker stop` at least that long (`stop_grace_period` in compose).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/redtail"]
