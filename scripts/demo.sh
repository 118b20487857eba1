#!/usr/bin/env bash
# The README's main command: install what is needed, then run the demo.
# (Until qvm-mount-folder exists, the demo serves a sample folder with
# qsf-server and reads it through diod's independent 9P clients.)
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$REPO/scripts/install.sh"
exec bash "$REPO/scripts/demo_9p.sh"
