#!/usr/bin/env bash
# Plots bench result JSON files as PNGs: bench/plot.sh bench/results/netns.json ...
# Installs matplotlib (PyPI) into a venv under the tools folder the first time.
set -euo pipefail
: "${WHISK_TOOLS_DIR:=/opt/whisk-tools}"
venv=$WHISK_TOOLS_DIR/plot-venv
if ! "$venv/bin/python" -c 'import matplotlib' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q matplotlib
fi
for f in "$@"; do
    "$venv/bin/python" "$(dirname "${BASH_SOURCE[0]}")/plot.py" "$f"
done
