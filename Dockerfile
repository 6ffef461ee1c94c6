# syntax=docker/dockerfile:1
# The operator image: a static (musl) binary on an empty base, running as UID 65532.
#
#   docker build -t <your registry>/oauthapp-operator:$(git describe --tags --always) .
#
# Multi-arch: `docker buildx build --platform linux/amd64,linux/arm64 ...` builds natively in
# each platform's builder image (Alpine's Rust targets musl, which links statically by default).

# Any Rust >= the crate's rust-version; pin it (or a digest) for reproducible images.
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-alpine AS builder
# musl-dev: the C runtime for the crates that compile C (ring, for TLS).
RUN apk add --no-cache musl-dev
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# The caches keep dependencies and the registry between builds; the binary is copied out of the
# target cache mount because cache mounts are not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin oauthapp-operator \
    && cp target/release/oauthapp-operator /oauthapp-operator \
    && /oauthapp-operator --version

FROM scratch
LABEL org.opencontainers.image.title="oauthapp-operator" \
      org.opencontainers.image.description="Owns the client secrets of OAuth applications" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /oauthapp-operator /oauthapp-operator
# 65532: the conventional "nonroot" UID/GID; numeric, so runAsNonRoot can verify it without an
# /etc/passwd. The image needs no writable path (the chart mounts the root filesystem read-only).
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/oauthapp-operator"]
CMD ["run"]
