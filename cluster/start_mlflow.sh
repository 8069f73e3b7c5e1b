#!/usr/bin/env bash
# Start (or stop) the MLflow tracking server that a search logs to, in the background.
#
#   start_mlflow.sh --backend URI --artifacts DEST [--host ADDR] [--port N] [--state-dir DIR]
#   start_mlflow.sh --stop [--state-dir DIR]
#
# Artifacts are proxied (--artifacts-destination), so trials on worker nodes upload through the server
# and never write to their own disks. The server binds ADDR only: 127.0.0.1 unless --host names another
# address (a cluster head passes its private address so workers can log), never 0.0.0.0; reach it from
# a laptop through an SSH tunnel.
# Running it again while the server answers does nothing, so a head's setup commands may repeat it.
set -euo pipefail

host="" port=5000 backend="" artifacts="" stop=0
state_dir="${PRECROP_MLFLOW_STATE:-$HOME/.precrop-mlflow}"
die() { echo "start_mlflow.sh: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --backend) backend="${2:?--backend needs a URI}"; shift 2 ;;
        --artifacts) artifacts="${2:?--artifacts needs a destination}"; shift 2 ;;
        --host) host="${2:?--host needs an address}"; shift 2 ;;
        --port) port="${2:?--port needs a number}"; shift 2 ;;
        --state-dir) state_dir="${2:?--state-dir needs a directory}"; shift 2 ;;
        --stop) stop=1; shift ;;
        *) die "unknown argument $1 (see the comment at the top of this script)" ;;
    esac
done
pid_file="$state_dir/mlflow.pid"
log_file="$state_dir/mlflow.log"

running_pid() {
    [ -f "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null && cat "$pid_file"
}

if [ "$stop" = 1 ]; then
    if pid="$(running_pid)"; then
        # the server's gunicorn/uvicorn workers share its process group
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL -- "-$pid" 2>/dev/null || true
        echo "MLflow server (pid $pid) stopped"
    fi
    rm -f "$pid_file"
    exit 0
fi

[ -n "$backend" ] || die "--backend is required, e.g. postgresql+psycopg2://USER@/mlflow?host=/var/run/postgresql"
[ -n "$artifacts" ] || die "--artifacts is required, e.g. s3://BUCKET/mlflow-artifacts or a directory"
[[ "$port" =~ ^[0-9]+$ ]] || die "--port must be a number, got $port"
[ -n "$host" ] || host=127.0.0.1
case "$host" in
    0.0.0.0 | "::" | "[::]") die "refusing to listen on every interface ($host); pass a private address" ;;
esac

url="http://$host:$port"
if pid="$(running_pid)"; then
    echo "MLflow server already running (pid $pid): $url"
    exit 0
fi
mkdir -p "$state_dir"
case "$artifacts" in *://*) ;; *) mkdir -p "$artifacts" ;; esac

export MLFLOW_DISABLE_TELEMETRY=true
# the job runner serves GenAI evaluation jobs, which a search never submits: skip its worker processes
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
# setsid: its own process group, so --stop ends the workers too and the caller's exit does not
setsid nohup mlflow server --host "$host" --port "$port" --backend-store-uri "$backend" \
    --artifacts-destination "$artifacts" --workers "${PRECROP_MLFLOW_WORKERS:-2}" \
    >"$log_file" 2>&1 </dev/null &
echo $! >"$pid_file"

for _ in $(seq 240); do
    if python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" "$url/health" \
        2>/dev/null; then
        echo "MLflow server running (pid $(cat "$pid_file")): $url  (log: $log_file)"
        exit 0
    fi
    if ! kill -0 "$(cat "$pid_file")" 2>/dev/null; then
        echo "start_mlflow.sh: the MLflow server exited; the end of $log_file:" >&2
        tail -n 20 "$log_file" >&2
        rm -f "$pid_file"
        exit 1
    fi
    sleep 0.5
done
echo "start_mlflow.sh: no answer from $url/health after 120 s; see $log_file" >&2
exit 1
