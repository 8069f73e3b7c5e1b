#!/usr/bin/env bash
# Every node's setup (the launcher YAMLs' setup_commands): a virtual environment with this project at
# the pinned version. The wheel comes from ~/precrop-dist (file_mounts: ./dist, built with
# `pip wheel --no-deps -w dist .`), every dependency at its version in requirements.lock (file_mounts: the
# checkout's one lock, which the tests ran with), so the head and all workers run the same Ray, torch and
# MLflow. Re-running it is cheap once installed.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
venv="$HOME/precrop-venv"
python="${PRECROP_PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    if "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        "$python" -m venv "$venv"
    else  # an image with an older Python: uv brings a managed CPython 3.11
        "$python" -m pip install --quiet --user --constraint "$here/../requirements.lock" uv
        "$HOME/.local/bin/uv" venv --seed --python 3.11 "$venv"
    fi
fi
"$venv/bin/python" -m pip install --quiet --constraint "$here/../requirements.lock" \
    --find-links "$HOME/precrop-dist" "precrop-search" "ray[default]"

# Ray's command runner sources ~/.bashrc before every command: put the venv first on PATH, once.
line="export PATH=\"$venv/bin:\$PATH\"  # precrop-search"
grep -qxF "$line" "$HOME/.bashrc" 2>/dev/null || echo "$line" >>"$HOME/.bashrc"
"$venv/bin/precrop" info >/dev/null
echo "precrop-search $("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("precrop-search"))') ready in $venv"
