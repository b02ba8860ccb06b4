# PostgreSQL from Debian's package, for docs/postgres/compose.yml: a database `locker` owned by
# the user `locker` (password from POSTGRES_PASSWORD), listening on all interfaces with
# password authentication, made on the first start in the volume /var/lib/postgresql/data.
# A base image that already holds the package (scripts/image-test makes one with debootstrap,
# to build without network) is used as it is.
ARG DEBIAN_IMAGE=debian:bookworm-slim
FROM ${DEBIAN_IMAGE}
RUN if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && ln -s /usr/lib/postgresql/*/bin /usr/lib/postgresql/bin \
    && install -d -o postgres -g postgres -m 700 /var/lib/postgresql/data \
    && install -d -o postgres -g postgres /var/run/postgresql
COPY postgres-start.sh /usr/local/bin/postgres-start
USER postgres
ENV PGDATA=/var/lib/postgresql/data PATH=/usr/lib/postgresql/bin:$PATH
VOLUME /var/lib/postgresql/data
EXPOSE 5432
CMD ["postgres-start"]
