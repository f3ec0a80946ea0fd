#!/bin/sh
# DNS-01 hook for deadsfu's `--acme-dns-hook` in tests: sets or clears a TXT record through
# pebble-challtestsrv's management API.
#
#   --acme-dns-hook 'tests/acme/dns-hook.sh http://127.0.0.1:PORT'
#
# deadsfu runs it as `sh -c 'CMD "$@"' deadsfu-dns-hook set|clear NAME VALUE`, so this script
# gets: CHALLTESTSRV_URL set|clear NAME VALUE, with NAME like `_acme-challenge.sfu.test`
# (no trailing dot). Exits non-zero if the record could not be changed; prints no values.
set -eu

usage() {
  echo "usage: $0 CHALLTESTSRV_URL set|clear NAME [VALUE]" >&2
  exit 2
}

[ $# -ge 3 ] || usage
base=${1%/}
action=$2
name=${3%.}.
value=${4-}

# The values go into JSON strings unescaped: allow only what a DNS name or an ACME TXT value
# (base64url) holds, and refuse anything else rather than send it half-escaped.
plain() {
  case $1 in
    *[!A-Za-z0-9._~=+/:_-]*) echo "dns-hook: unexpected characters in the $2" >&2; exit 2 ;;
  esac
}
plain "$name" name
plain "$value" value

case $action in
  set)
    [ $# -ge 4 ] || usage
    path=/set-txt
    body="{\"host\":\"$name\",\"value\":\"$value\"}"
    ;;
  clear)
    path=/clear-txt
    body="{\"host\":\"$name\"}"
    ;;
  *) usage ;;
esac

# --fail: non-zero exit on an HTTP error status; no output on success.
if ! curl --silent --show-error --fail --max-time 10 \
  -H 'Content-Type: application/json' --data "$body" -o /dev/null "$base$path"; then
  echo "dns-hook: $action TXT $name via $base$path failed" >&2
  exit 1
fi
