#!/usr/bin/env bash
# Prepares a fresh Debian 12 machine (as root) to build and test ovnet, and is cheap to re-run:
# each step checks first and only acts when something is missing or out of date, because
# scripts/test.sh runs this before every test run.
#
#   1. Debian packages: etcd (server and client), nftables, iproute2, util-linux (nsenter),
#      tcpdump, iperf3, dnsperf and dnsmasq-base (e2e tests and benchmarks), user-mode-linux and
#      kmod (tests/uml: a kernel with ESP, its modules loaded with modprobe; iptables-legacy
#      blocks ESP there), debootstrap and systemd-container (tests/nodes: booted Debian 12
#      nodes under systemd-nspawn, their rootfs made by debootstrap), openssh-client (Ansible
#      reaches those nodes by SSH), podman, runc and busybox-static (bench/images.py: a
#      private podman and a locally built test image), chromium (tests/e2e/test_webview.py:
#      the manager's web view in a headless browser), prometheus (tests/e2e/test_metrics.py:
#      a real Prometheus scraping a dev cluster), and what a venv with C extensions needs.
#      Debian's etcd and prometheus services are stopped and disabled right after we install
#      them: the tests start their own etcd on free loopback ports and their own Prometheus,
#      and system ones on 2379 and 9090 would only get in the way.
#   2. .venv in the repository, made with the python3 on PATH (3.11 or newer), with
#      `pip install -e '.[dev]'`. A stamp file holding a hash of pyproject.toml and the
#      interpreter's version skips the pip step when nothing changed.
#
# Environment: PYTHON (interpreter for the venv, default python3), OVNET_SKIP_APT=1 (leave
# Debian packages alone, e.g. on a developer machine that is not Debian).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv"
stamp="$venv/.ovnet-install-stamp"
python=${PYTHON:-python3}

packages=(etcd-server etcd-client nftables iproute2 util-linux tcpdump iperf3 dnsperf dnsmasq-base user-mode-linux kmod iptables debootstrap systemd-container openssh-client podman runc busybox-static chromium prometheus python3-venv python3-dev gcc tmux)

say() { printf 'install.sh: %s\n' "$*"; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }

is_installed() {
    [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true) == "install ok installed" ]]
}

# Debian's postinst may start etcd on 127.0.0.1:2379 (or prometheus on :9090) with systemd or
# through its init script; either way it is not ours to keep running. Without systemd (a
# container) the policy-rc.d usually prevents the start, so every step here tolerates "nothing
# to stop".
stop_system_service() {
    local name=$1
    if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
        say "stopping and disabling Debian's $name service (tests run their own $name)"
        systemctl disable --now "$name" >/dev/null 2>&1 || true
    elif [[ -x /etc/init.d/$name ]] && "/etc/init.d/$name" status >/dev/null 2>&1; then
        say "stopping Debian's $name service started by its init script"
        "/etc/init.d/$name" stop >/dev/null 2>&1 || true
    fi
}

install_debian_packages() {
    if [[ ${OVNET_SKIP_APT:-0} == 1 ]]; then
        say "OVNET_SKIP_APT=1: not checking Debian packages"
        return
    fi
    command -v dpkg-query >/dev/null || die "dpkg-query not found: this script expects Debian 12 \
(set OVNET_SKIP_APT=1 to skip the package step)"
    local missing=() p
    for p in "${packages[@]}"; do
        is_installed "$p" || missing+=("$p")
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        say "Debian packages present: ${packages[*]}"
        return
    fi
    [[ $(id -u) -eq 0 ]] || die "missing Debian packages (${missing[*]}): run this \
as root (a fresh Debian 12 has no sudo: log in as root, or su -)"
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
    if [[ " ${missing[*]} " == *" etcd-server "* ]]; then
        stop_system_service etcd
    fi
    if [[ " ${missing[*]} " == *" prometheus "* ]]; then
        stop_system_service prometheus
    fi
}

# Whether "$1" runs and is Python 3.11 or newer (ovnet uses tomllib, ExceptionGroup, Self).
python_ok() {
    "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' >/dev/null 2>&1
}

# A venv whose interpreter no longer runs (its base Python was removed or upgraded) or is too
# old is rebuilt rather than patched.
ensure_venv() {
    if python_ok "$venv/bin/python"; then
        return
    fi
    command -v "$python" >/dev/null || die "no '$python' on PATH; ovnet needs Python 3.11 or newer"
    python_ok "$python" || die "'$python' ($("$python" -V 2>&1 | head -n1)) is not a working \
Python 3.11 or newer; set PYTHON=/path/to/python3.11"
    if [[ -e $venv ]]; then
        say "removing unusable virtualenv $venv"
        rm -rf "$venv"
    fi
    say "creating virtualenv $venv with $("$python" -V 2>&1)"
    "$python" -m venv "$venv"
}

install_python_packages() {
    local want
    want=$( { sha256sum "$root/pyproject.toml"; "$venv/bin/python" -V; } | sha256sum | cut -d' ' -f1)
    # The stamp alone is not trusted: the distribution must still be installed (a removed
    # ovnet.egg-info or a half-finished pip run leaves a stamp that lies).
    if [[ -f $stamp && $(cat "$stamp") == "$want" ]] \
        && (cd / && "$venv/bin/python" -c 'import importlib.metadata as m; m.version("ovnet")') \
            >/dev/null 2>&1; then
        say "virtualenv up to date (pyproject.toml unchanged)"
        return
    fi
    say "installing ovnet and its dev dependencies into $venv"
    "$venv/bin/python" -m pip install --disable-pip-version-check -q -e "$root[dev]"
    printf '%s\n' "$want" >"$stamp"
}

install_debian_packages
ensure_venv
install_python_packages
say "done"
