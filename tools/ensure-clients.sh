#!/usr/bin/env bash
# Make sure the real line clients the server tests drive (nc and telnet) are installed.
# Idempotent and quiet: prints nothing and touches nothing when both are present; runs
# `apt-get update` only when something must be installed, and shows apt's output only
# if that fails. Installing needs root (or password-less sudo).
set -euo pipefail

missing=()
command -v nc >/dev/null 2>&1 || missing+=(netcat-openbsd)
command -v telnet >/dev/null 2>&1 || missing+=(telnet)
[ "${#missing[@]}" -eq 0 ] && exit 0

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        sudo=(sudo -n)
    else
        echo "ensure-clients: need root to install ${missing[*]}" >&2
        exit 1
    fi
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
if ! { "${sudo[@]}" apt-get update -qq &&
       "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1
then
    cat "$log" >&2
    echo "ensure-clients: could not install ${missing[*]}" >&2
    exit 1
fi
if ! command -v nc >/dev/null 2>&1 || ! command -v telnet >/dev/null 2>&1; then
    echo "ensure-clients: installed ${missing[*]} but nc or telnet is still missing" >&2
    exit 1
fi
