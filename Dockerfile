# locker's images.
#
#   docker build .                  the Concourse resource type (default, last stage)
#   docker build --target server .  the lock server
#
# The base images are build arguments so they can come from a mirror or be
# made locally; scripts/image-test makes them with debootstrap and builds
# offline. If the build context holds a `vendor/` directory and a
# `.cargo/config.toml` pointing at it, cargo uses those crates and needs no
# network.
#
# Only classic Dockerfile syntax is used (no BuildKit-only flags), so the
# legacy builder works as well as BuildKit.

ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

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

# A minimal root file system for the resource image: the three binaries, the
# exact shared libraries they link and the dynamic loader, a CA bundle, and
# an /etc/passwd (containerd-based Concourse workers fail on images without
# one). No shell, no package manager.
FROM build AS resource-rootfs
RUN set -eu; \
    root=/rootfs; \
    mkdir -p "$root/opt/resource" "$root/etc/ssl/certs" "$root/tmp"; \
    chmod 1777 "$root/tmp"; \
    cp /out/check /out/in /out/out "$root/opt/resource/"; \
    for lib in $(ldd "$root"/opt/resource/* | grep -o '/[^ ]*' | grep -v "^$root" | sort -u); do \
        mkdir -p "$root$(dirname "$lib")"; \
        cp -L "$lib" "$root$lib"; \
    done; \
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"; \
    printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' \
        'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' >"$root/etc/passwd"; \
    printf '%s\n' 'root:x:0:' 'nogroup:x:65534:' >"$root/etc/group"; \
    printf '%s\n' 'hosts: files dns' >"$root/etc/nsswitch.conf"

FROM ${RUNTIME_IMAGE} AS server
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="locker-server" \
      org.opencontainers.image.description="Lock server for the locker Concourse resource" \
      org.opencontainers.image.source="https://github.com/locker-ci/locker" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/locker /usr/local/bin/locker
RUN useradd --system --uid 10001 --user-group --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin locker \
    && mkdir -p /data \
    && chown locker:locker /data
ENV PORT=3000 \
    LOCKER_CONFIG=/data/locker.yml
USER locker
WORKDIR /data
VOLUME /data
EXPOSE 3000
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["locker", "healthcheck"]
ENTRYPOINT ["locker"]

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
