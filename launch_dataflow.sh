#!/usr/bin/env bash
# Run synanno-datagen on Google Cloud Dataflow.
#
#   PROJECT=my-project REGION=us-central1 BUCKET=my-bucket \
#     ./launch_dataflow.sh [--dry-run] [run] --materialization gs://... --source-url gs://... \
#                          --target-url gs://... --output-dir gs://... [more flags]
#
# Required: PROJECT, REGION, BUCKET (name or gs://name; temp and staging files go under
# gs://BUCKET/synanno-datagen/). Optional: SERVICE_ACCOUNT (worker service account e-mail),
# NETWORK, MAX_WORKERS, MACHINE_TYPE, JOB_NAME (default synanno-datagen-YYYYMMDD-HHMMSS, UTC),
# PYTHON (interpreter with synanno-datagen installed; default python3).
# Every flag after ours goes to 'synanno-datagen run' (and from there to Beam).
# --dry-run prints the exact command instead of running it.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage_error() {
  echo "launch_dataflow.sh: error: $*" >&2
  exit 2
}

require() {
  local name="$1" what="$2"
  [ -n "${!name:-}" ] || usage_error "$name is not set; export $name=<$what> (see the top of this script)"
}

dry_run=0
if [ "${1:-}" = "--dry-run" ]; then
  dry_run=1
  shift
fi
action="run"
case "${1:-}" in
  run) shift ;;
  -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
esac

require PROJECT "GCP project id"
require REGION "Dataflow region, e.g. us-central1"
require BUCKET "bucket for temp and staging files"
root="gs://${BUCKET#gs://}"
root="${root%/}"
job_name="${JOB_NAME:-synanno-datagen-$(date -u +%Y%m%d-%H%M%S)}"
[[ "$job_name" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] \
  || usage_error "JOB_NAME '$job_name' must be lowercase letters, digits and hyphens"

cmd=("${PYTHON:-python3}" -m pipeline.cli run "$@"
  --runner DataflowRunner
  --project "$PROJECT"
  --region "$REGION"
  --job_name "$job_name"
  --temp_location "$root/synanno-datagen/temp"
  --staging_location "$root/synanno-datagen/staging"
  --setup_file "$here/setup.py")
if [ -n "${SERVICE_ACCOUNT:-}" ]; then cmd+=(--service_account_email "$SERVICE_ACCOUNT"); fi
if [ -n "${NETWORK:-}" ]; then cmd+=(--network "$NETWORK"); fi
if [ -n "${MAX_WORKERS:-}" ]; then
  [[ "$MAX_WORKERS" =~ ^[1-9][0-9]*$ ]] || usage_error "MAX_WORKERS '$MAX_WORKERS' is not a positive integer"
  cmd+=(--max_num_workers "$MAX_WORKERS")
fi
if [ -n "${MACHINE_TYPE:-}" ]; then cmd+=(--machine_type "$MACHINE_TYPE"); fi

if [ "$dry_run" = 1 ]; then
  printf '%q ' "${cmd[@]}"
  printf '\n'
  exit 0
fi
cd "$here"
echo "launch_dataflow.sh: $action: submitting job $job_name to $PROJECT/$REGION" >&2
exec "${cmd[@]}"
