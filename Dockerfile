# syntax=docker/dockerfile:1
# fiddler_crab in a container: the release-small binary on Debian slim with Python 3 for exec
# endpoints, as an unprivileged user, listening on 0.0.0.0:8080.
#
#   docker build -t fiddler-crab:latest .          # or: podman build -t fiddler-crab:latest .
#   docker run --rm -p 8080:8080 fiddler-crab:latest
#   curl -s -X POST --data 'hello crab' localhost:8080/wordcount
#
# Arguments after the image name go to fiddler_crab, e.g.
#   docker run --rm -p 8080:8080 fiddler-crab:latest serve /date date
#   docker run --rm -p 8080:8080 -v "$PWD/config.toml:/etc/fiddler_crab/config.toml:ro" \
#       fiddler-crab:latest --config /etc/fiddler_crab/config.toml
# docs/deploy/kubernetes.yaml runs this image as fiddler-crab:latest (see docs/deploy/README.md).

# The builder's Debian release matches the runtime's, so the binary's glibc is there.
ARG RUST_IMAGE=rust:1-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS builder
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target directory between builds (BuildKit, buildah, podman).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --locked --profile release-small --bin fiddler_crab \
    && install -m 0755 target/release-small/fiddler_crab /usr/local/bin/fiddler_crab

FROM ${RUNTIME_IMAGE}
# python3: exec endpoints such as examples/wordcount.py, and fiddler_worker. No init process is
# needed: fiddler_crab, PID 1 here, handles SIGTERM/SIGINT/SIGHUP itself and, as a child
# subreaper, kills and reaps whatever escapes a job's process group (docs/HARDENING.md).
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && echo /opt/fiddler_crab/python > /usr/lib/python3/dist-packages/fiddler_worker.pth \
    && groupadd --system --gid 65532 fiddler \
    && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin fiddler
COPY --from=builder /usr/local/bin/fiddler_crab /usr/local/bin/fiddler_crab
COPY examples/ /opt/fiddler_crab/examples/
# The fiddler_worker helper; the .pth file above makes `python3 -m fiddler_worker` importable
# without PYTHONPATH (which an exec child does not inherit unless the config passes it).
COPY python/ /opt/fiddler_crab/python/
COPY config/ /opt/fiddler_crab/config/
USER 65532:65532
WORKDIR /opt/fiddler_crab
ENV FIDDLER_CRAB_LISTEN=0.0.0.0:8080
EXPOSE 8080
# Liveness for plain Docker (Kubernetes uses the manifest's probes instead). Assumes the main
# listener on port 8080 answers /healthz, i.e. no admin_listen and no HTTPS.
HEALTHCHECK --interval=30s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/fiddler_crab"]
