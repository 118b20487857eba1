#!/usr/bin/env bash
# The README's main command: install what is needed, then share a folder for
# real through a simulated dom0, server qube and client qube (qsf_sim): the
# qrexec services, the policy files, dom0's question, `qvm-mount-folder` with
# the FUSE backend, `fusermount -u`. Options go to the demo (`--help`).
# The 9P-only demo (qsf-server read by diod's clients) is scripts/demo_9p.sh.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$REPO/scripts/install.sh"
exec "${QSF_VENV:-/opt/qsf-venv}/bin/python" -m qsf_sim.demo "$@"
