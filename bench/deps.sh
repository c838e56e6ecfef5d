#!/usr/bin/env bash
# What the benchmarks need besides the project's Python packages: Debian's nginx, wrk
# and OpenSSH (installed only if missing), and matplotlib for the plot (in the venv).
# The package scripts may start Debian's own nginx and sshd: we stop those right away,
# since the benchmarks run their own instances on free loopback ports.
# Usage: bench/deps.sh PYTHON
set -euo pipefail

PY=${1:?usage: bench/deps.sh PYTHON}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

NEEDED=(
    "nginx:nginx"
    "wrk:wrk"
    "sshd:openssh-server"
    "ssh:openssh-client"
    "ssh-keygen:openssh-client"
)

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

missing=()
for entry in "${NEEDED[@]}"; do
    cmd=${entry%%:*}
    pkg=${entry#*:}
    if ! have "$cmd" && [[ " ${missing[*]} " != *" $pkg "* ]]; then
        missing+=("$pkg")
    fi
done

if [ ${#missing[@]} -gt 0 ]; then
    echo "bench-deps: installing ${missing[*]}"
    SUDO=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            SUDO=(sudo -n)
        else
            echo "bench-deps: ERROR: not root; run as root: apt-get install ${missing[*]}" >&2
            exit 1
        fi
    fi
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # Debian's services, if the package scripts started them: not ours, not wanted.
    for svc in nginx ssh; do
        if command -v service >/dev/null 2>&1; then
            "${SUDO[@]}" service "$svc" stop >/dev/null 2>&1 || true
        fi
    done
fi

if ! "$PY" -c 'import matplotlib' >/dev/null 2>&1; then
    echo "bench-deps: pip install -r bench/requirements.txt"
    "$PY" -m pip install --quiet --disable-pip-version-check -r "$HERE/requirements.txt"
fi
