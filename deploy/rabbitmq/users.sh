#!/bin/sh
# notifier's RabbitMQ users, one per role and never guest (docs/deployment.md), made
# with rabbitmqctl against node $RABBITMQ_NODE (default rabbit@rabbitmq1; a cluster
# shares its users):
#
#   users.sh setup               the "notifier" vhost (quorum queues by default), the
#                                users notifier-worker and notifier-api, and
#                                notifier-admin (management UI) if
#                                RABBITMQ_ADMIN_PASSWORD is set; guest deleted
#   users.sh add-publisher NAME  a TTHC system's user (password on standard input): may
#                                publish status events and nothing else; then bind it to
#                                its agencies with `notifier broker set-agencies NAME`
#
# Passwords travel on standard input, never as arguments (the process list shows those).
# The permissions are those of notifier.ops.brokeradmin (publishers) and
# deploy/rabbitmq-definitions.json (worker).
set -eu
umask 077
printf '%s' "$RABBITMQ_COOKIE" > "$HOME/.erlang.cookie"
chmod 400 "$HOME/.erlang.cookie"

VHOST=notifier
EXCHANGE=notifier.events

ctl() { rabbitmqctl -q -n "${RABBITMQ_NODE:-rabbit@rabbitmq1}" "$@"; }
user_exists() { ctl list_users --no-table-headers | cut -f1 | grep -qx "$1"; }
add_user() {  # NAME, password on stdin; an existing user keeps its password
    if user_exists "$1"; then
        echo "user $1 exists (rotate its password with rabbitmqctl change_password)"
        cat > /dev/null
    else
        ctl add_user "$1"
    fi
}

ctl await_startup
case "${1:-setup}" in
setup)
    ctl add_vhost "$VHOST" --default-queue-type quorum 2>/dev/null || true  # may exist
    printf '%s\n' "$RABBITMQ_WORKER_PASSWORD" | add_user notifier-worker
    ctl set_permissions -p "$VHOST" notifier-worker \
        '^notifier\.' '^(notifier\..*|amq\.default)$' '^notifier\.'
    # The API publishes events and enqueues replays; it consumes nothing.
    printf '%s\n' "$RABBITMQ_API_PASSWORD" | add_user notifier-api
    ctl set_permissions -p "$VHOST" notifier-api \
        '^notifier\.' '^(notifier\..*|amq\.default)$' '^$'
    if [ -n "${RABBITMQ_ADMIN_PASSWORD:-}" ]; then
        printf '%s\n' "$RABBITMQ_ADMIN_PASSWORD" | add_user notifier-admin
        ctl set_user_tags notifier-admin administrator
        ctl set_permissions -p "$VHOST" notifier-admin '.*' '.*' '.*'
    fi
    if user_exists guest; then
        ctl delete_user guest
    fi
    ;;
add-publisher)
    name=${2:?usage: users.sh add-publisher NAME (password on stdin)}
    add_user "$name"
    ctl set_permissions -p "$VHOST" "$name" '^$' "^notifier\\.events\$" '^$'
    ctl set_topic_permissions -p "$VHOST" "$name" "$EXCHANGE" '^dossier\.status\.v1$' '^$'
    echo "now bind $name to its agencies: notifier broker set-agencies $name --agency CODE"
    ;;
*)
    echo "usage: users.sh setup | add-publisher NAME" >&2
    exit 2
    ;;
esac
