#!/bin/sh
# Starts Alertmanager with the webhook URL from ALERT_WEBHOOK_URL: writes
# alertmanager.yml with its placeholder URL replaced, checks the result with
# amtool and runs Alertmanager on it. deploy/docker-compose.yml runs it as the
# alertmanager service's entrypoint (Alertmanager 0.25 reads no environment
# variables and has no url_file for webhooks).
#
# Also refuses to start without the PagerDuty routing key (compose mounts it as
# the secret /run/secrets/pagerduty_routing_key from PAGERDUTY_ROUTING_KEY), so
# that a page cannot fail later for want of it.
#
# Paths can be moved for a test: ALERTMANAGER_TEMPLATE, ALERTMANAGER_CONFIG,
# PAGERDUTY_ROUTING_KEY_FILE. Arguments go on to alertmanager.
set -eu

template=${ALERTMANAGER_TEMPLATE:-/etc/alertmanager/alertmanager.yml}
config=${ALERTMANAGER_CONFIG:-/tmp/alertmanager.yml}
key_file=${PAGERDUTY_ROUTING_KEY_FILE:-/run/secrets/pagerduty_routing_key}
placeholder=http://alert-webhook.invalid/engram

fail() { echo "start.sh: $*" >&2; exit 1; }

[ -n "${ALERT_WEBHOOK_URL:-}" ] ||
    fail "ALERT_WEBHOOK_URL is not set: set it to the URL alerts are posted to"
case $ALERT_WEBHOOK_URL in
    http://* | https://*) ;;
    *) fail "ALERT_WEBHOOK_URL must start with http:// or https://" ;;
esac
[ -s "$key_file" ] ||
    fail "$key_file is missing or empty: set PAGERDUTY_ROUTING_KEY (a PagerDuty Events API v2 integration key) where docker compose runs"

# A literal replacement (ENVIRON, index and substr): sed or gsub would read
# & and \ in the URL as their own syntax.
awk -v placeholder="$placeholder" '
    { i = index($0, placeholder) }
    i > 0 { $0 = substr($0, 1, i - 1) ENVIRON["ALERT_WEBHOOK_URL"] substr($0, i + length(placeholder)); n++ }
    { print }
    END { if (n != 1) { print "start.sh: expected the placeholder URL once, found it " n + 0 " times" > "/dev/stderr"; exit 1 } }
' "$template" >"$config"

amtool check-config "$config" >/dev/null || fail "the rendered $config does not check (amtool check-config)"

exec alertmanager --config.file="$config" "$@"
