#!/usr/bin/env bash
# Compile the SIP hot path (message layer, framing, inspection, REGISTER service) to C
# extension modules with mypyc, next to their sources. Optional: the same .py files run as
# plain Python when this step is skipped (REGISTRAR_NATIVE=0) or fails; `registrar serve`
# logs which it runs (sipstack/native.py). Sources unchanged since the last build: nothing to do.
#
#   bash scripts/build_native.sh           build (or reuse) the compiled modules
#   REGISTRAR_NATIVE=0 bash scripts/build_native.sh   remove them: run pure Python
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=${VENV:-.venv}
say() { printf 'native: %s\n' "$*"; }

# Keep in step with sipstack/native.py NATIVE_MODULES.
MODULES=(
    sipstack/uri.py sipstack/headers.py sipstack/message.py sipstack/parser.py sipstack/auth.py
    sipstack/framing.py sipstack/transaction.py sipstack/transport/flows.py
    sipstack/transport/stream.py sipstack/transport/datagram.py sipstack/transport/endpoint.py
    registrar/checks.py registrar/register.py registrar/location.py registrar/dispatch.py
    registrar/ratelimit.py
)

remove() {
    local m
    for m in "${MODULES[@]}"; do rm -f "${m%.py}".cpython-*.so; done
    rm -f ./*__mypyc.cpython-*.so
}

if [ "${REGISTRAR_NATIVE:-1}" = 0 ]; then
    remove
    say "REGISTRAR_NATIVE=0: compiled modules removed, pure Python"
    exit 0
fi
if [ ! -x "$VENV/bin/mypyc" ]; then
    say "warning: $VENV/bin/mypyc not found (pip install -e '.[native]'); pure Python"
    remove
    exit 0
fi

stamp_file=build/native.stamp
want=$(cat "${MODULES[@]}" | cksum | cut -d' ' -f1-2)
want="$want $("$VENV/bin/python" -c 'import sys, mypy.version
print(sys.version.split()[0], sys._base_executable, mypy.version.__version__)')"
built=1
for m in "${MODULES[@]}"; do
    compgen -G "${m%.py}.cpython-*.so" >/dev/null || built=0
done
if [ "$built" = 1 ] && [ "$(cat "$stamp_file" 2>/dev/null || true)" = "$want" ]; then
    say "compiled modules up to date (${#MODULES[@]})"
    exit 0
fi

say "compiling ${#MODULES[@]} modules with mypyc (about a minute)"
mkdir -p build
if "$VENV/bin/mypyc" --ignore-missing-imports "${MODULES[@]}" >build/native.log 2>&1; then
    printf '%s\n' "$want" >"$stamp_file"
    say "done (log: build/native.log)"
else
    remove
    rm -f "$stamp_file"
    say "warning: mypyc failed, running pure Python; see build/native.log:"
    tail -n 20 build/native.log >&2
fi
