# syntax=docker/dockerfile:1
# lineaged's own image: built on the Rust image, run on distroless `cc`
# (glibc, CA certificates, no shell) as a non-root user. Probes are
# /healthz and /readyz (no HEALTHCHECK: orchestrators probe over HTTP).
#
#   docker build -t lineaged .
#   docker build --build-arg BASE_DIGEST=sha256:… -t lineaged .   # record the base
#
# The OCI base annotations make this image a well-behaved member of the
# lineage it manages: lineaged (or anyone) can tell what it was built on.
ARG RUST_IMAGE=docker.io/library/rust:1.89-bookworm
ARG BASE_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY migrations migrations
COPY benches benches
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin lineaged \
 && install -D -m 0755 target/release/lineaged /out/usr/local/bin/lineaged \
 && mkdir -p /out/var/lib/lineaged /out/etc/lineaged

FROM ${BASE_IMAGE}
ARG BASE_IMAGE
ARG BASE_DIGEST=""
ARG VERSION=0.1.0
ARG REVISION=""
LABEL org.opencontainers.image.title="lineaged" \
      org.opencontainers.image.description="Keeps container images rebuilt on fresh base images" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}" \
      org.opencontainers.image.base.digest="${BASE_DIGEST}"
COPY --from=build --chown=65532:65532 /out/ /
USER 65532:65532
# SQLite's default file (`sqlite://lineaged.db`) lands in the working
# directory: mount a volume here, or use Postgres.
WORKDIR /var/lib/lineaged
ENV LINEAGED_CONFIG=/etc/lineaged \
    LINEAGED_LOG_FORMAT=json
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/lineaged"]
CMD ["serve"]
