#!/bin/bash
# notifier's PostgreSQL primary, first start only (run by the postgres image's entrypoint
# from /docker-entrypoint-initdb.d): the application's role and database, and the role
# the standby replicates with. Passwords are scram-sha-256 hashes; pg_hba asks for them.
set -euo pipefail
# The server already requires a synchronous standby, which does not exist yet: these
# commits are local only (the standby's base backup copies them).
export PGOPTIONS="-c synchronous_commit=local"
export PGPASSWORD="${POSTGRES_PASSWORD}"
psql -v ON_ERROR_STOP=1 --username postgres --dbname postgres \
    --set=app_password="${NOTIFIER_DB_PASSWORD}" \
    --set=replication_password="${REPLICATION_PASSWORD}" <<'SQL'
CREATE ROLE notifier LOGIN PASSWORD :'app_password';
CREATE DATABASE notifier OWNER notifier;
CREATE ROLE replicator LOGIN REPLICATION PASSWORD :'replication_password';
SQL
echo "host replication replicator all scram-sha-256" >> "${PGDATA}/pg_hba.conf"
