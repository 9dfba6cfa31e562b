#!/usr/bin/env bash
# Run synanno-datagen on Google Cloud Dataflow, build its Flex Template, schedule it nightly.
#
#   ./launch_dataflow.sh [--dry-run] [run] FLAGS       one Dataflow job now
#   ./launch_dataflow.sh [--dry-run] build-template    image (Cloud Build) + Flex Template spec
#   ./launch_dataflow.sh [--dry-run] schedule FLAGS    create/update a Cloud Scheduler job that
#                                                      launches the template with FLAGS
# FLAGS are 'synanno-datagen run' flags (--materialization gs://... --output-dir gs://... ...).
# Required: PROJECT, REGION, BUCKET (name or gs://name; temp, staging and the template spec go
# under gs://BUCKET/synanno-datagen/). Optional: SERVICE_ACCOUNT (worker service account e-mail;
# required by schedule, whose OAuth token it also signs), NETWORK, MAX_WORKERS, MACHINE_TYPE,
# JOB_NAME (default synanno-datagen-YYYYMMDD-HHMMSS, UTC; schedule: synanno-datagen-nightly),
# PYTHON (interpreter with synanno-datagen installed; default python3), IMAGE (default
# REGION-docker.pkg.dev/PROJECT/synanno/synanno-datagen:latest), TEMPLATE_PATH, SCHEDULE (cron,
# default "0 2 * * *"), TIME_ZONE (default Etc/UTC), SCHEDULER_JOB (default
# synanno-datagen-nightly). --dry-run prints the exact commands instead of running them.
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
  run|build-template|schedule) action="$1"; shift ;;
  -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
esac

require PROJECT "GCP project id"
require REGION "Dataflow region, e.g. us-central1"
require BUCKET "bucket for temp and staging files"
root="gs://${BUCKET#gs://}"
root="${root%/}"
image="${IMAGE:-$REGION-docker.pkg.dev/$PROJECT/synanno/synanno-datagen:latest}"
template_path="${TEMPLATE_PATH:-$root/synanno-datagen/templates/synanno-datagen.json}"
if [ -n "${MAX_WORKERS:-}" ] && ! [[ "$MAX_WORKERS" =~ ^[1-9][0-9]*$ ]]; then
  usage_error "MAX_WORKERS '$MAX_WORKERS' is not a positive integer"
fi

# Print (--dry-run) or run one command.
do_cmd() {
  if [ "$dry_run" = 1 ]; then
    printf '%q ' "$@"
    printf '\n'
  else
    "$@"
  fi
}

check_job_name() {
  [[ "$1" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] \
    || usage_error "JOB_NAME '$1' must be lowercase letters, digits and hyphens"
}

run_job() {
  local job_name="${JOB_NAME:-synanno-datagen-$(date -u +%Y%m%d-%H%M%S)}"
  check_job_name "$job_name"
  local cmd=("${PYTHON:-python3}" -m synanno_datagen run "$@"
    --runner DataflowRunner
    --project "$PROJECT"
    --region "$REGION"
    --job_name "$job_name"
    --temp_location "$root/synanno-datagen/temp"
    --staging_location "$root/synanno-datagen/staging"
    --setup_file "$here/setup.py")
  if [ -n "${SERVICE_ACCOUNT:-}" ]; then cmd+=(--service_account_email "$SERVICE_ACCOUNT"); fi
  if [ -n "${NETWORK:-}" ]; then cmd+=(--network "$NETWORK"); fi
  if [ -n "${MAX_WORKERS:-}" ]; then cmd+=(--max_num_workers "$MAX_WORKERS"); fi
  if [ -n "${MACHINE_TYPE:-}" ]; then cmd+=(--machine_type "$MACHINE_TYPE"); fi
  if [ "$dry_run" = 0 ]; then
    echo "launch_dataflow.sh: run: submitting job $job_name to $PROJECT/$REGION" >&2
    cd "$here"
  fi
  do_cmd "${cmd[@]}"
}

build_template() {
  do_cmd gcloud builds submit "$here" --project "$PROJECT" --region "$REGION" --tag "$image"
  do_cmd gcloud dataflow flex-template build "$template_path" --project "$PROJECT" \
    --image "$image" --sdk-language PYTHON --metadata-file "$here/metadata.json"
}

schedule() {
  require SERVICE_ACCOUNT "service account e-mail that launches the nightly job"
  local job_name="${JOB_NAME:-synanno-datagen-nightly}" scheduler_job="${SCHEDULER_JOB:-synanno-datagen-nightly}"
  check_job_name "$job_name"
  local body
  body="$("${PYTHON:-python3}" -m synanno_datagen.pipeline.flex body --template-path "$template_path" \
    --job-name "$job_name" --temp-location "$root/synanno-datagen/temp" \
    --staging-location "$root/synanno-datagen/staging" --service-account "$SERVICE_ACCOUNT" \
    --max-workers "${MAX_WORKERS:-}" --machine-type "${MACHINE_TYPE:-}" \
    --network "${NETWORK:-}" --sdk-container-image "$image" -- "$@")" \
    || usage_error "the template parameters above are not valid; fix the flags"
  local uri="https://dataflow.googleapis.com/v1b3/projects/$PROJECT/locations/$REGION/flexTemplates:launch"
  local verb=create headers=--headers
  if [ "$dry_run" = 0 ] && gcloud scheduler jobs describe "$scheduler_job" --project "$PROJECT" \
      --location "$REGION" >/dev/null 2>&1; then
    verb=update headers=--update-headers
  fi
  do_cmd gcloud scheduler jobs "$verb" http "$scheduler_job" --project "$PROJECT" \
    --location "$REGION" --schedule "${SCHEDULE:-0 2 * * *}" --time-zone "${TIME_ZONE:-Etc/UTC}" \
    --uri "$uri" --http-method POST "$headers" Content-Type=application/json \
    --oauth-service-account-email "$SERVICE_ACCOUNT" \
    --oauth-token-scope https://www.googleapis.com/auth/cloud-platform --message-body "$body"
}

case "$action" in
  run) run_job "$@" ;;
  build-template) build_template ;;
  schedule) schedule "$@" ;;
esac
