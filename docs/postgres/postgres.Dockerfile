# PostgreSQL from Debian's package, for docs/postgres/compose.yml: a database `locker` owned by
# the user `locker` (password from POSTGRES_PASSWORD), listening on all interfaces with
# password authentication, made on the first start in the volume /var/lib/postgresql/data.
ARG DEBIAN_IMAGE=debian:bookworm-slim
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s /usr/lib/postgresql/*/bin /usr/lib/postgresql/bin
COPY postgres-start.sh /usr/local/bin/postgres-start
USER postgres
ENV PGDATA=/var/lib/postgresql/data PATH=/usr/lib/postgresql/bin:$PATH
VOLUME /var/lib/postgresql/data
EXPOSE 5432
CMD ["postgres-start"]
