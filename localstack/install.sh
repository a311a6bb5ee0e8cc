#!/usr/bin/env bash
# Installs LocalStack (the S3 emulator the tests use) into a virtualenv kept outside the
# checkout, without Docker. Idempotent: a second run with everything in place only checks
# and prints the venv path.
#
#   localstack/install.sh            # install if missing, print the venv folder
#
# Environment:
#   PRONTO_LOCALSTACK_VENV   venv folder (default ${XDG_CACHE_HOME:-$HOME/.cache}/pronto-offsite/localstack)
#   PRONTO_LOCALSTACK_PYTHON a Python >= 3.13 to build the venv with (default: pyenv's 3.13.x,
#                            then python3.13 / python3 on PATH if they are 3.13 or newer)
#
# LocalStack needs Python >= 3.13: on 3.12 it starts and then fails with "No component
# plugins found". The two extra pins keep it from crashing at start with today's PyPI.
set -euo pipefail

LOCALSTACK_VERSION="2026.3.0"
PIP_SPECS=("localstack-core[runtime]==${LOCALSTACK_VERSION}" "cbor2<6" "pyopenssl<24.3")

venv="${PRONTO_LOCALSTACK_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/pronto-offsite/localstack}"
stamp="$venv/.pronto-installed"
want_stamp="${PIP_SPECS[*]}"

if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want_stamp" ] \
  && "$venv/bin/python" -c 'import localstack.runtime.main' >/dev/null 2>&1; then
  echo "$venv"
  exit 0
fi

is_new_enough() {
  "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 13) else 1)' >/dev/null 2>&1
}

find_python() {
  if [ -n "${PRONTO_LOCALSTACK_PYTHON:-}" ]; then
    is_new_enough "$PRONTO_LOCALSTACK_PYTHON" && { echo "$PRONTO_LOCALSTACK_PYTHON"; return 0; }
    echo "localstack/install.sh: PRONTO_LOCALSTACK_PYTHON=$PRONTO_LOCALSTACK_PYTHON is not Python >= 3.13" >&2
    return 1
  fi
  local root="${PYENV_ROOT:-$HOME/.pyenv}" c
  for c in $(ls -d "$root"/versions/3.1[3-9]*/bin/python3 2>/dev/null | sort -rV) \
           "$(command -v python3.14 || true)" "$(command -v python3.13 || true)" \
           "$(command -v python3 || true)"; do
    [ -n "$c" ] && [ -x "$c" ] && is_new_enough "$c" && { echo "$c"; return 0; }
  done
  echo "localstack/install.sh: no Python >= 3.13 found (looked in $root/versions/3.13*, python3.13, python3)." >&2
  echo "  Install one (e.g. 'pyenv install 3.13' or your distribution's python3.13) or set PRONTO_LOCALSTACK_PYTHON." >&2
  return 1
}

py="$(find_python)"
echo "localstack/install.sh: installing LocalStack ${LOCALSTACK_VERSION} into $venv with $py ($("$py" --version 2>&1))" >&2
mkdir -p "$(dirname "$venv")"
if [ ! -x "$venv/bin/python" ] || ! is_new_enough "$venv/bin/python"; then
  rm -rf "$venv"
  "$py" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${PIP_SPECS[@]}" >&2
"$venv/bin/python" -c 'import localstack.runtime.main' >/dev/null
printf '%s' "$want_stamp" >"$stamp"
echo "$venv"
