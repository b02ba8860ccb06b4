# locker's images.
#
#   docker build .                  the Concourse resource type (default, last stage)
#   docker build --target server .  the lock server
#
# Both images are FROM scratch: the binaries, the shared libraries they link,
# a CA bundle and a passwd file (scripts/minimal-rootfs); no shell. The build
# image is a build argument so it can come from a mirror or be made locally;
# scripts/image-test makes it with debootstrap and builds offline. If the build context holds a `vendor/` directory and a
# `.cargo/config.toml` pointing at it, cargo uses those crates and needs no
# network.
#
# Only classic Dockerfile syntax is used (no BuildKit-only flags), so the
# legacy builder works as well as BuildKit.

ARG RUST_IMAGE=rust:1.95-slim-bookworm

# The workspace's manifests, with every Rust source file replaced by a stub
# (plus vendor/ and .cargo/ when present). It changes only when dependencies
# or the file layout change, so the dependency build below stays cached while
# the code is edited.
FROM ${RUST_IMAGE} AS recipe
WORKDIR /src
COPY . .
RUN set -eu; \
    mkdir /recipe; \
    find . \( -path ./vendor -o -path ./target \) -prune -o -type f \
        \( -name Cargo.toml -o -name Cargo.lock -o -name '*.rs' \) -print \
    | while read -r f; do \
        mkdir -p "/recipe/$(dirname "$f")"; \
        case "$f" in \
            *.rs) echo 'fn main() {}' >"/recipe/$f" ;; \
            *) cp "$f" "/recipe/$f" ;; \
        esac; \
    done; \
    for d in vendor .cargo; do if [ -d "$d" ]; then cp -a "$d" /recipe/; fi; done

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY --from=recipe /recipe/ ./
RUN cargo build --release --locked -p locker-server -p locker-resource
COPY . .
# The stubs were built after the real sources' modification times, so make
# cargo see the real sources as newer.
RUN find . \( -path ./vendor -o -path ./target \) -prune -o -name '*.rs' -exec touch {} + \
    && cargo build --release --locked -p locker-server -p locker-resource \
    && mkdir -p /out \
    && cp target/release/locker target/release/check target/release/in target/release/out /out/

# The resource image's root: /opt/resource/check, in and out.
FROM build AS resource-rootfs
RUN mkdir -p /rootfs/opt/resource \
    && cp /out/check /out/in /out/out /rootfs/opt/resource/ \
    && scripts/minimal-rootfs /rootfs

# The server image's root: /usr/local/bin/locker and /data for its state,
# owned by the `locker` user.
FROM build AS server-rootfs
RUN mkdir -p /rootfs/usr/local/bin /rootfs/data \
    && cp /out/locker /rootfs/usr/local/bin/ \
    && scripts/minimal-rootfs /rootfs \
    && chown 10001:10001 /rootfs/data

FROM scratch AS server
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="locker-server" \
      org.opencontainers.image.description="Lock server for the locker Concourse resource" \
      org.opencontainers.image.source="https://github.com/locker-ci/locker" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=server-rootfs /rootfs/ /
ENV PORT=3000 \
    LOCKER_CONFIG=/data/locker.yml
USER 10001:10001
WORKDIR /data
VOLUME /data
EXPOSE 3000
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/locker", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/locker"]

FROM scratch AS resource
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="locker-resource" \
      org.opencontainers.image.description="Concourse resource type that takes and releases locks on a locker server" \
      org.opencontainers.image.source="https://github.com/locker-ci/locker" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=resource-rootfs /rootfs/ /
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
