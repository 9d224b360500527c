# Sourced by scripts/demo.sh and scripts/test.sh: create or reuse the virtualenv for
# $PYTHON (default: python3) and install diag with its test dependencies into it.
# The venv is named after the interpreter's version, so 3.11, 3.12 and 3.13 coexist.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
ver="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
venv="$root/.venv-$ver"
stamp="$venv/.installed"
if [ ! -x "$venv/bin/python" ]; then
    "$PYTHON" -m venv "$venv"
fi
# Reinstall only when the project's metadata (pyproject.toml, setup.py) or its C source
# changed since the last install (the editable install compiles diag/_origins.c and
# diag/_attach_boot.c next to it).
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ] || [ "$root/setup.py" -nt "$stamp" ] \
        || [ "$root/diag/_origins.c" -nt "$stamp" ] || [ "$root/diag/_attach_boot.c" -nt "$stamp" ]; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$root[test]"
    touch "$stamp"
fi
# anyio's own test suite ships only in its sdist: tests/diag/test_plugin_frameworks.py runs a
# subset of it under the leak check. Fetched with pip, once, for the anyio version installed.
anyio_version="$("$venv/bin/python" -c 'from importlib.metadata import version; print(version("anyio"))' 2>/dev/null || true)"
if [ -n "$anyio_version" ] && [ ! -f "$venv/sdists/anyio-$anyio_version.tar.gz" ]; then
    "$venv/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
        --dest "$venv/sdists" "anyio==$anyio_version" >&2 \
        || echo "scripts/venv.sh: could not download anyio $anyio_version's sdist" >&2
fi
export PATH="$venv/bin:$PATH"
export VIRTUAL_ENV="$venv"
cd "$root"
