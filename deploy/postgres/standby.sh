#!/bin/bash
# notifier's PostgreSQL standby (deploy/compose.ha.yml). First start: a base backup of
# the primary over a replication slot, as the "replicator" role (scram-sha-256, its
# password in an owner-only .pgpass), streaming as "standby1", the name the primary's
# synchronous_standby_names waits for. Then, every start, the image's own entrypoint.
set -euo pipefail
PGDATA=${PGDATA:-/var/lib/postgresql/data}
if [ ! -s "${PGDATA}/PG_VERSION" ]; then
    passfile=/var/lib/postgresql/.pgpass
    umask 077
    printf '%s:5432:*:replicator:%s\n' "${PRIMARY_HOST}" "${REPLICATION_PASSWORD}" > "${passfile}"
    chown postgres:postgres "${passfile}"
    mkdir -p "${PGDATA}"
    chown postgres:postgres "${PGDATA}"
    chmod 700 "${PGDATA}"
    until gosu postgres pg_isready -q -h "${PRIMARY_HOST}" -p 5432; do sleep 1; done
    gosu postgres pg_basebackup -h "${PRIMARY_HOST}" -p 5432 -U replicator -D "${PGDATA}" \
        -X stream -R --create-slot --slot=standby1
    cat >> "${PGDATA}/postgresql.auto.conf" <<CONF
primary_conninfo = 'host=${PRIMARY_HOST} port=5432 user=replicator passfile=${passfile} application_name=standby1'
primary_slot_name = 'standby1'
CONF
fi
exec docker-entrypoint.sh "$@"
