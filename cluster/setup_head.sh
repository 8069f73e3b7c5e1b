#!/usr/bin/env bash
# The head's setup (head_setup_commands): PostgreSQL for MLflow's runs and, in a second database, the
# searches' Optuna studies; a bucket for Tune state and MLflow artifacts; the environment a search reads
# (MLFLOW_TRACKING_URI, PRECROP_STORAGE_PATH, PRECROP_OPTUNA_STORAGE); and the MLflow server on the head's
# private address. No credentials: the databases are reached over their local socket as this user (peer
# authentication), object storage through the instance's role.
#
#   setup_head.sh aws|gcp [BUCKET_URL]     (default bucket: precrop-search-<account or project id>)
set -euo pipefail

cloud="${1:?usage: setup_head.sh aws|gcp [BUCKET_URL]}"
here="$(cd "$(dirname "$0")" && pwd)"
case "$cloud" in
    aws) bucket="${2:-s3://precrop-search-$(aws sts get-caller-identity --query Account --output text)}"
         aws s3 ls "$bucket" >/dev/null 2>&1 || aws s3 mb "$bucket" ;;
    gcp) bucket="${2:-gs://precrop-search-$(gcloud config get-value project 2>/dev/null)}"
         gcloud storage ls "$bucket" >/dev/null 2>&1 || gcloud storage buckets create "$bucket" ;;
    *) echo "setup_head.sh: cloud must be aws or gcp, got $cloud" >&2; exit 2 ;;
esac
bucket="${bucket%/}"

# PostgreSQL, local only (Debian/Ubuntu's default listens on localhost and its socket)
if ! command -v psql >/dev/null; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql
fi
sudo systemctl enable --now postgresql
user="$(whoami)"
sudo -u postgres psql -tAc "SELECT 1 FROM pg_roles WHERE rolname='$user'" | grep -q 1 ||
    sudo -u postgres createuser "$user"
# two databases: MLflow and Optuna both keep their schema revision in a table named alembic_version
for database in mlflow optuna; do
    sudo -u postgres psql -tAc "SELECT 1 FROM pg_database WHERE datname='$database'" | grep -q 1 ||
        sudo -u postgres createdb -O "$user" "$database"
done
# the database driver, optuna-dashboard, the object-storage client MLflow's artifact proxy uses, and the
# autoscaler's cloud SDK
case "$cloud" in
    aws) extras=(psycopg2-binary optuna-dashboard boto3) ;;
    gcp) extras=(psycopg2-binary optuna-dashboard google-cloud-storage google-api-python-client) ;;
esac
"$HOME/precrop-venv/bin/python" -m pip install --quiet --constraint "$here/../requirements.lock" "${extras[@]}"

host="$(hostname -I | awk '{print $1}')"
{
    echo "export MLFLOW_TRACKING_URI=http://$host:5000  # precrop-search"
    echo "export PRECROP_STORAGE_PATH=$bucket/ray_results  # precrop-search"
    echo "export PRECROP_OPTUNA_STORAGE='postgresql+psycopg2://$user@/optuna?host=/var/run/postgresql'  # precrop-search"
    echo "export MLFLOW_DISABLE_TELEMETRY=true RAY_USAGE_STATS_ENABLED=0  # precrop-search"
} >"$HOME/.precrop-env"
grep -qxF "source ~/.precrop-env" "$HOME/.bashrc" || echo "source ~/.precrop-env" >>"$HOME/.bashrc"

PATH="$HOME/precrop-venv/bin:$PATH" bash "$here/start_mlflow.sh" --host "$host" --port 5000 \
    --backend "postgresql+psycopg2://$user@/mlflow?host=/var/run/postgresql" --artifacts "$bucket/mlflow-artifacts"
