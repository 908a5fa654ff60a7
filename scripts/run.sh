#!/usr/bin/env bash
# Run one local FE: setup.sh, certificates in certs/ if missing, then `registrar serve` on
# loopback (TLS 5061, TCP 5060, UDP 5060). Extra arguments are passed to `registrar serve`.
# Environment: REGISTRAR_FQDN (default fe1.local) names the FE certificate.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh

name=${REGISTRAR_FQDN:-fe1.local}
if [ ! -s certs/ca.crt ] || [ ! -s "certs/$name.crt" ] || [ ! -s "certs/$name.key" ]; then
    echo "run: generating certificates in certs/"
    .venv/bin/registrar certs init --out certs --name "$name"
fi

exec .venv/bin/registrar serve \
    --listen tls:127.0.0.1:5061 \
    --listen tcp:127.0.0.1:5060 \
    --listen udp:127.0.0.1:5060 \
    --cert "certs/$name.crt" \
    --key "certs/$name.key" \
    "$@"
