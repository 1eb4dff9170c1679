#!/usr/bin/env bash
# Set up everything sdn-egress needs on a Debian 12 machine (as root), then run
# the demo (`bootstrap.sh demo`) or the whole test suite (`bootstrap.sh test`).
# Safe to run again: installed packages and an up-to-date virtualenv are kept.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${SDN_EGRESS_VENV:-/opt/sdn-egress/venv}
what=${1:-demo}
shift || true

if [ "$(id -u)" != 0 ]; then
    echo "bootstrap.sh: run as root (the lab creates network namespaces and OVS instances)" >&2
    exit 2
fi

debs=(openvswitch-switch openvswitch-common iproute2 iptables ethtool tcpdump procps iputils-ping iperf3 python3 python3-venv python3-pip)
missing=()
for p in "${debs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "bootstrap.sh: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# The lab starts its own OVS per node namespace; a distribution-started
# ovs-vswitchd (where systemd runs) is left alone.

stamp="$venv/.sdn-egress-installed"
if [ ! -x "$venv/bin/python" ]; then
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv"
fi
# -P: the check must not import the sdn_egress of the current directory (a
# clone run from its own root would pass it while the venv points elsewhere).
if [ ! -f "$stamp" ] || [ "$here/setup.py" -nt "$stamp" ] || ! "$venv/bin/python" -P -c "import sdn_egress" 2>/dev/null \
    || [ "$("$venv/bin/python" -P -c 'import sdn_egress,os;print(os.path.dirname(os.path.dirname(sdn_egress.__file__)))')" != "$here" ]; then
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q -e "$here[test]"
    touch "$stamp"
fi

cd "$here"
case "$what" in
    demo)
        exec "$venv/bin/sdn-egress" demo "$@" ;;
    test)
        # The documented architecture is the enforced one (docs/architecture.md):
        # lint and the import layers first, then the suite.
        "$venv/bin/ruff" check --no-cache .
        "$venv/bin/lint-imports" --no-cache
        # --durations: the slowest tests named in every run, to keep the suite in its budget.
        exec "$venv/bin/python" -m pytest -p no:cacheprovider --durations=25 "$@" tests ;;
    setup)
        echo "bootstrap.sh: ready: $venv/bin/sdn-egress" ;;
    *)
        echo "usage: bootstrap.sh demo|test|setup [args...]" >&2; exit 2 ;;
esac
