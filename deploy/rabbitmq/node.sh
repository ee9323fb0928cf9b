#!/bin/sh
# One node of notifier's RabbitMQ cluster (deploy/compose.ha.yml): the cluster's shared
# Erlang cookie from the environment into the owner-only file RabbitMQ reads, then the
# image's own entrypoint.
set -eu
umask 077
cookie=/var/lib/rabbitmq/.erlang.cookie
printf '%s' "$RABBITMQ_COOKIE" > "$cookie"
chown rabbitmq:rabbitmq "$cookie"
chmod 400 "$cookie"
unset RABBITMQ_COOKIE
exec docker-entrypoint.sh rabbitmq-server
