#!/usr/bin/env bash
# Prepare a development/test environment for the SIP registrar pool (idempotent, quick when done).
#
#  * .venv (python3 -m venv) with the project installed editable with its test extras;
#    reinstalled only when pyproject.toml or the Python version changed (stamp in .venv).
#  * Debian packages whose commands the tests use, installed only if a command is missing:
#    sipp (sip-tester), sipsak, openssl, pgrep/pkill (procps), svwar/svcrack (sipvicious),
#    baresip (baresip-core), docker-compose (validates docker-compose.yml; no engine needed).
#
# Works from any directory, as root or via sudo. Environment:
#   PYTHON=...                interpreter used to create the venv (default: the distribution's
#                             /usr/bin/python3 when it is 3.11 or newer, else python3 on PATH;
#                             a .venv made from another interpreter is recreated)
#   REGISTRAR_SKIP_APT=1      never touch Debian packages (only warn about missing commands)
#   REGISTRAR_FORCE_PIP=1     reinstall the Python packages even if the stamp is current
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
STAMP="$VENV/.setup-stamp"
# The default interpreter is the distribution's: Debian builds /usr/bin/python3 with
# profile-guided and link-time optimisation and links libpython into it statically. The
# python3 first on PATH of our machines (pyenv) is a plain --enable-shared build, on which an
# FE spent about a fifth more CPU per REGISTER (docs/native.md, "Interpreter").
if [ -z "${PYTHON:-}" ]; then
    PYTHON=python3
    if [ -x /usr/bin/python3 ] \
        && /usr/bin/python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        PYTHON=/usr/bin/python3
    fi
fi

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

# Serialise concurrent runs (e.g. two test.sh started at once) on the same checkout.
if command -v flock >/dev/null 2>&1; then
    lock="${TMPDIR:-/tmp}/registrar-setup-$(id -u)-$(printf '%s' "$ROOT" | cksum | cut -d' ' -f1).lock"
    if { exec 9>"$lock"; } 2>/dev/null; then
        flock 9
    fi
fi

# ---------------------------------------------------------------- Debian packages
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    SUDO=(sudo)
fi

apt_lists_present() {
    compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null
}

apt_install() {
    # DPkg::Lock::Timeout waits for another apt/dpkg run instead of failing on the lock.
    local opts=(-y -q --no-install-recommends -o DPkg::Lock::Timeout=600)
    if ! apt_lists_present; then
        say "apt-get update"
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=600 update
        UPDATED=1
    fi
    say "apt-get install $*"
    if ! "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install "${opts[@]}" "$@"; then
        [ "${UPDATED:-0}" = 1 ] && return 1
        say "install failed; apt-get update and retry"
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=600 update
        UPDATED=1
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install "${opts[@]}" "$@"
    fi
}

can_apt() {
    command -v apt-get >/dev/null 2>&1 || return 1
    [ "$(id -u)" -eq 0 ] || command -v sudo >/dev/null 2>&1
}

# command:package pairs
missing_pkgs=()
for pair in sipp:sip-tester sipsak:sipsak openssl:openssl pgrep:procps pkill:procps \
    svwar:sipvicious svcrack:sipvicious baresip:baresip-core docker-compose:docker-compose; do
    cmd=${pair%%:*} pkg=${pair#*:}
    if ! command -v "$cmd" >/dev/null 2>&1 && [[ " ${missing_pkgs[*]-} " != *" $pkg "* ]]; then
        missing_pkgs+=("$pkg")
    fi
done
if [ ${#missing_pkgs[@]} -gt 0 ]; then
    if [ "${REGISTRAR_SKIP_APT:-0}" = 1 ]; then
        say "warning: missing Debian packages (REGISTRAR_SKIP_APT=1): ${missing_pkgs[*]}"
    elif can_apt; then
        apt_install "${missing_pkgs[@]}"
    else
        die "missing Debian packages ${missing_pkgs[*]}; need apt-get and root or sudo" \
            "(or set REGISTRAR_SKIP_APT=1)"
    fi
fi

# ---------------------------------------------------------------- Python venv
if [ -L "$VENV/bin/python" ] && [ ! -e "$VENV/bin/python" ]; then
    [ -O "$VENV" ] && [ ! -L "$VENV" ] || die "$VENV/bin/python is a dangling link; remove .venv"
    say "stale .venv (its base interpreter is gone); recreating"
    rm -rf "$VENV"
elif [ -e "$VENV/bin/python" ] && ! "$VENV/bin/python" -c '' >/dev/null 2>&1; then
    die "$VENV/bin/python does not run; fix or remove .venv and rerun"
fi
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found; install Python >= 3.11"
real_exe='import os, sys; print(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))'
want_base=$("$PYTHON" -c "$real_exe")
if [ -x "$VENV/bin/python" ]; then
    have_base=$("$VENV/bin/python" -c "$real_exe")
    if [ "$want_base" != "$have_base" ]; then
        say "recreating .venv with $want_base (it was made from $have_base)"
        rm -rf "$VENV"
    fi
fi
if [ ! -x "$VENV/bin/python" ]; then
    say "creating .venv with $("$PYTHON" -V 2>&1)"
    if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
        # Debian ships ensurepip separately (python3-venv / python3.X-venv).
        rm -rf "$VENV"
        can_apt || die "python3 -m venv failed; install python3-venv"
        pyver=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
        apt_install python3-venv "python${pyver}-venv"
        "$PYTHON" -m venv "$VENV"
    fi
fi

# mypyc (scripts/build_native.sh) compiles against the interpreter's headers.
if ! "$VENV/bin/python" -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
    pyver=$("$VENV/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    # (Debian's headers package, for Debian's interpreter only)
    if [ "${REGISTRAR_SKIP_APT:-0}" != 1 ] && can_apt && [[ "$want_base" == /usr/bin/* ]]; then
        apt_install "python${pyver}-dev"
    else
        say "warning: no Python.h for $("$VENV/bin/python" -V 2>&1): the hot path will run as pure Python"
    fi
fi

want_stamp="$(cksum <pyproject.toml | cut -d' ' -f1-2) $("$VENV/bin/python" -c \
    'import sys; print(sys.version.split()[0])')"
have_stamp=$(cat "$STAMP" 2>/dev/null || true)
if [ "${REGISTRAR_FORCE_PIP:-0}" = 1 ] || [ "$want_stamp" != "$have_stamp" ] \
    || [ ! -x "$VENV/bin/pytest" ] || [ ! -x "$VENV/bin/ruff" ] || [ ! -x "$VENV/bin/registrar" ]; then
    say "upgrading pip"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
    say "pip install -e '.[test,native]'"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --config-settings editable_mode=compat -e '.[test,native]'
    printf '%s\n' "$want_stamp" >"$STAMP"
else
    say "python packages up to date"
fi

bash scripts/build_native.sh

say "ready ($("$VENV/bin/python" -V 2>&1), $(command -v sipp >/dev/null 2>&1 && echo sipp || echo 'no sipp'))"
