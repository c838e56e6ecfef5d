#!/usr/bin/env bash
# Install the Debian packages that the tests and the demo need, only those missing.
# Each entry is "command:package": the command is what we need, the package has it.
# The tests start their own nginx and tinyproxy on free loopback ports, so Debian's
# own services are kept from starting while we install.
set -euo pipefail

NEEDED=(
    "ssh:openssh-client"   # stock OpenSSH as an agent (e2e tests)
    "ip:iproute2"          # network namespaces (e2e tests)
    "ps:procps"
    "curl:curl"            # scripts/demo.sh
    "nginx:nginx"          # TLS in front of the relay's WebSocket tunnel (agent tests)
    "tinyproxy:tinyproxy"  # HTTP CONNECT proxy with Basic auth (agent tests)
    "systemd-analyze:systemd"  # systemd-analyze verify on the units (packaging tests)
    "chromium:chromium"    # the web console's browser tests (Playwright drives it)
)

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }

missing=()
names=()
for entry in "${NEEDED[@]}"; do
    cmd=${entry%%:*}
    pkg=${entry#*:}
    names+=("$cmd")
    if ! have "$cmd" && [[ " ${missing[*]} " != *" $pkg "* ]]; then
        missing+=("$pkg")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "system-deps: all present (${names[*]})"
    exit 0
fi

echo "system-deps: missing packages: ${missing[*]}"

if ! command -v apt-get >/dev/null 2>&1; then
    echo "system-deps: ERROR: no apt-get here; install these packages yourself: ${missing[*]}" >&2
    exit 1
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        echo "system-deps: ERROR: not root and no password-less sudo;" \
            "run as root: apt-get install ${missing[*]}" >&2
        exit 1
    fi
fi

# policy-rc.d answering 101 keeps package scripts from starting services (Debian's
# documented switch); put in place only for this install, only if there is none.
POLICY=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$POLICY" >/dev/null
    "${SUDO[@]}" chmod 755 "$POLICY"
    made_policy=1
fi
remove_policy() {
    if [ "$made_policy" = 1 ]; then
        "${SUDO[@]}" rm -f "$POLICY"
    fi
}
trap remove_policy EXIT

"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "system-deps: installed ${missing[*]}"
