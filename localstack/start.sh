#!/usr/bin/env bash
# Starts LocalStack's S3 on 127.0.0.1, on the host (no Docker), on a free port, in the
# foreground. Prints `PORT=<port>` and `ENDPOINT=http://127.0.0.1:<port>` on stdout as soon
# as S3 answers, then keeps running until interrupted (Ctrl-C) or killed.
#
#   localstack/start.sh                  # a free port, state in a temp folder (removed on exit)
#   localstack/start.sh --port 4566      # a fixed port
#   localstack/start.sh --dir /srv/ls    # keep state in /srv/ls (kept on exit)
#
# Run localstack/install.sh first (it prints the venv; PRONTO_LOCALSTACK_VENV overrides it).
set -euo pipefail

port=""
dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --port) port="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "localstack/start.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

venv="${PRONTO_LOCALSTACK_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/pronto-offsite/localstack}"
if [ ! -x "$venv/bin/python" ]; then
  echo "localstack/start.sh: LocalStack is not installed in $venv: run localstack/install.sh" >&2
  exit 1
fi

if [ -z "$port" ]; then
  # Ask the kernel for a free port (there is a small race until LocalStack binds it).
  port="$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
fi

cleanup_dir=""
if [ -z "$dir" ]; then
  dir="$(mktemp -d -t pronto-localstack.XXXXXX)"
  cleanup_dir="$dir"
fi
mkdir -p "$dir/vol" "$dir/tmp" "$dir/conf"

# OVERRIDE_IN_DOCKER=0: this machine may look like a container; without it LocalStack
# writes under /var/lib. GATEWAY_SERVER=hypercorn works without extra packages.
env GATEWAY_SERVER=hypercorn OVERRIDE_IN_DOCKER=0 GATEWAY_LISTEN="127.0.0.1:$port" SERVICES=s3 \
  FILESYSTEM_ROOT="$dir" LOCALSTACK_VOLUME_DIR="$dir/vol" TMPDIR="$dir/tmp" CONFIG_DIR="$dir/conf" \
  SKIP_SSL_CERT_DOWNLOAD=1 DISABLE_EVENTS=1 \
  "$venv/bin/python" -m localstack.runtime.main >"$dir/localstack.log" 2>&1 &
pid=$!

stop() {
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  [ -n "$cleanup_dir" ] && rm -rf "$cleanup_dir"
}
trap stop EXIT
trap 'exit 130' INT TERM

for _ in $(seq 1 300); do
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "localstack/start.sh: LocalStack exited during start; its log:" >&2
    cat "$dir/localstack.log" >&2
    exit 1
  fi
  health="$("$venv/bin/python" - "$port" <<'EOF' 2>/dev/null || true
import sys, urllib.request
try:
    print(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/_localstack/health", timeout=1).read().decode())
except Exception:
    pass
EOF
)"
  if echo "$health" | grep -Eq '"s3": *"(available|running)"'; then
    echo "PORT=$port"
    echo "ENDPOINT=http://127.0.0.1:$port"
    echo "localstack/start.sh: S3 is up (state in $dir, log $dir/localstack.log); Ctrl-C stops it" >&2
    wait "$pid"
    exit $?
  fi
  sleep 0.2
done
echo "localstack/start.sh: S3 did not come up within 60 s; log: $dir/localstack.log" >&2
exit 1
