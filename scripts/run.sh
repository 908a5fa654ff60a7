#!/usr/bin/env bash
# The main job: set everything up (scripts/setup.sh), then run a local pool of four front ends
# on 127.0.1.1-127.0.1.4 with its DNS server on 127.0.1.53:5353, from examples/contoso.toml.
# Certificates (run/certs) and a demo user directory (run/users.db: sip:user0001@contoso.com ...
# sip:user2000@contoso.com, password "demo") are created when missing. Ctrl-C stops the pool.
# Extra arguments go to `registrar pool up` (e.g. --restart-failed).
# Environment: REGISTRAR_TOPOLOGY picks another topology file.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh

exec .venv/bin/registrar pool up --topology "${REGISTRAR_TOPOLOGY:-examples/contoso.toml}" "$@"
