# PostgreSQL from Debian's package, for sites that cannot pull the official `postgres` image
# (docker/compose.offline.yml builds it from a local Debian base). docker/postgres-entrypoint.sh
# honours the official image's POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB and PGDATA
# (default /var/lib/postgresql/data), so the compose file's service definition is unchanged.
# Build from the repository root (legacy builder or BuildKit):
#   docker build -f docker/postgres.Dockerfile --build-arg BASE_IMAGE=local/bookworm:min -t gzsl-postgres .
# Bookworm packages PostgreSQL 15; the official image of docker-compose.yml is 17. Their data
# folders are not interchangeable, so the offline override keeps its own volume (pgdata-debian).
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
ARG PG_MAJOR=15
RUN set -eu; \
    apt-get update; \
    apt-get install -y --no-install-recommends postgresql-${PG_MAJOR} postgresql-client-${PG_MAJOR} locales; \
    rm -rf /var/lib/apt/lists/*; \
    echo 'en_US.UTF-8 UTF-8' > /etc/locale.gen; locale-gen; \
    mkdir -p /var/lib/postgresql/data /var/run/postgresql; \
    chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql; \
    chmod 2775 /var/run/postgresql
ENV PATH=/usr/lib/postgresql/${PG_MAJOR}/bin:$PATH PGDATA=/var/lib/postgresql/data LANG=en_US.UTF-8
COPY docker/postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
RUN chmod 755 /usr/local/bin/docker-entrypoint.sh
VOLUME /var/lib/postgresql/data
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]
