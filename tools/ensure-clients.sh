#!/usr/bin/env bash
# Make sure the tools the tests drive are installed: the real line clients (nc and
# telnet, required), and iproute2 and iptables for the real-network tests (optional:
# those tests skip, saying why, where they cannot be had or run). Idempotent and quiet:
# prints nothing and touches nothing when all are present; runs `apt-get update` only
# when something must be installed, and shows apt's output only if that fails.
# Installing needs root (or password-less sudo).
set -euo pipefail

missing=()
command -v nc >/dev/null 2>&1 || missing+=(netcat-openbsd)
command -v telnet >/dev/null 2>&1 || missing+=(telnet)
optional=()
command -v ip >/dev/null 2>&1 || optional+=(iproute2)
command -v iptables >/dev/null 2>&1 || optional+=(iptables)
[ "${#missing[@]}" -eq 0 ] && [ "${#optional[@]}" -eq 0 ] && exit 0

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo=(sudo -n)
    elif [ "${#missing[@]}" -eq 0 ]; then
        exit 0  # only optional tools are missing: their tests skip and say why
    else
        echo "ensure-clients: need root to install ${missing[*]}" >&2
        exit 1
    fi
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
wanted=("${missing[@]}" "${optional[@]}")
if ! { "${sudo[@]}" apt-get update -qq &&
       "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${wanted[@]}"; } >"$log" 2>&1
then
    if [ "${#missing[@]}" -eq 0 ]; then
        exit 0  # the optional tools could not be had: their tests skip and say why
    fi
    cat "$log" >&2
    echo "ensure-clients: could not install ${wanted[*]}" >&2
    exit 1
fi
if ! command -v nc >/dev/null 2>&1 || ! command -v telnet >/dev/null 2>&1; then
    echo "ensure-clients: installed ${missing[*]} but nc or telnet is still missing" >&2
    exit 1
fi
