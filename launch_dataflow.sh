#!/usr/bin/env bash
# Run synanno-datagen on Google Cloud Dataflow, build its Flex Template, schedule it nightly and
# report a job's state. Usage and variables: usage() below (./launch_dataflow.sh --help).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() {
  cat <<'EOF'
usage: ./launch_dataflow.sh [--dry-run] [run] FLAGS        one Dataflow job now (waits for it)
       ./launch_dataflow.sh [--dry-run] build-template     image (Cloud Build) + template spec
       ./launch_dataflow.sh [--dry-run] schedule FLAGS     create or update the Cloud Scheduler
                                                          job that launches the template nightly
       ./launch_dataflow.sh [--dry-run] status [--wait] [JOB_NAME]
                                                          state of the newest job named JOB_NAME;
                                                          --wait polls until it ends
FLAGS are 'synanno-datagen run' flags (--materialization gs://... --output-dir gs://... ...).
--dry-run (before or after the action) prints the exact commands instead of running them
          (a URL's password shown as ***).

Environment:
  PROJECT, REGION   required
  BUCKET            required except by status: name or gs://name; temp and staging files and
                    the template spec go under gs://BUCKET/synanno-datagen/
  SERVICE_ACCOUNT   worker service account e-mail; schedule needs it (it also signs the
                    scheduler's OAuth token)
  NETWORK, MAX_WORKERS, MACHINE_TYPE   worker settings
  JOB_NAME          default synanno-datagen-YYYYMMDD-HHMMSS (UTC); schedule and status:
                    synanno-datagen-nightly
  PYTHON            interpreter with synanno-datagen installed (default: the venv that ./dev
                    makes, SYNANNO_VENV or the .venv beside this script, if there is one, else
                    python3)
  IMAGE             default REGION-docker.pkg.dev/PROJECT/synanno/synanno-datagen:latest
  TEMPLATE_PATH     default gs://BUCKET/synanno-datagen/templates/synanno-datagen.json
  SCHEDULE, TIME_ZONE, SCHEDULER_JOB   default "0 2 * * *", Etc/UTC, synanno-datagen-nightly
  POLL_SECONDS      status --wait: seconds between polls (default 60)

Exit codes: 0 done (status: JOB_STATE_DONE); 1 the job failed (run) or ended otherwise (status:
FAILED, CANCELLED, DRAINED or UPDATED); 2 a usage error, or no such job; 3 another run holds the
output directory's lease (run); 4 the job has not ended yet (status without --wait); 5 gcloud
failed, so the job's state is unknown (status; with --wait, three polls in a row).
EOF
}

usage_error() {
  echo "launch_dataflow.sh: error: $*" >&2
  exit 2
}

require() {
  local name="$1" what="$2"
  [ -n "${!name:-}" ] || usage_error "$name is not set; export $name=<$what> (see the top of this script)"
}

# The interpreter that submits (run) or checks the template parameters (schedule), run with -P:
# where the script is called (a clone) its synanno_datagen/ folder must not shadow the package.
# ./dev's venv is SYNANNO_VENV (a relative one inside the clone), by default the clone's .venv.
venv="${SYNANNO_VENV:-.venv}"
case "$venv" in /*) ;; *) venv="$here/$venv" ;; esac
python="${PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x "$venv/bin/python" ]; then python="$venv/bin/python"; else python=python3; fi
fi

# --dry-run anywhere (before or after the action) makes it a dry run; it is no run flag.
dry_run=0
args=()
for arg in "$@"; do
  if [ "$arg" = "--dry-run" ]; then dry_run=1; else args+=("$arg"); fi
done
set -- ${args[@]+"${args[@]}"}
action="run" named=""
case "${1:-}" in
  run|build-template|schedule|status) action="$1" named="$1"; shift ;;
esac
# -h or --help anywhere: the usage (after 'run' or 'schedule', with the run flags), nothing
# else, and no variables needed (a schedule's body would otherwise be the flags' usage text)
for arg in "$@"; do
  case "$arg" in
    -h|--help)
      usage
      if [ "$named" = run ] || [ "$named" = schedule ]; then
        echo
        "$python" -P -m synanno_datagen run --help 2>/dev/null \
          || echo "FLAGS: see 'synanno-datagen run --help' where the package is installed"
      fi
      exit 0 ;;
  esac
done
if [ "$action" = build-template ] && [ "$#" -gt 0 ]; then
  usage_error "build-template takes no arguments (got $*)"
fi

require PROJECT "GCP project id"
require REGION "Dataflow region, e.g. us-central1"
[ "$action" = status ] || require BUCKET "bucket for temp and staging files"
bucket="${BUCKET:-}"
bucket="${bucket#gs://}"
bucket="${bucket%/}"
if [ "$action" != status ] && ! [[ "$bucket" =~ ^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$ ]]; then
  usage_error "BUCKET '$BUCKET' names no bucket; export BUCKET=<name> or gs://<name> (lower-case letters, digits, '-', '_' and '.', starting and ending with a letter or digit)"
fi
root="gs://$bucket"
image="${IMAGE:-$REGION-docker.pkg.dev/$PROJECT/synanno/synanno-datagen:latest}"
template_path="${TEMPLATE_PATH:-$root/synanno-datagen/templates/synanno-datagen.json}"
if [ -n "${MAX_WORKERS:-}" ] && ! [[ "$MAX_WORKERS" =~ ^[1-9][0-9]*$ ]]; then
  usage_error "MAX_WORKERS '$MAX_WORKERS' is not a positive integer"
fi

check_python() {
  "$python" -P -c 'import synanno_datagen.pipeline' >/dev/null 2>&1 \
    || usage_error "$python cannot import synanno_datagen: install the package there (pip install $here), or set PYTHON to an interpreter that has it (./dev makes $venv)"
}

# Print (--dry-run) or run one command. Printed, a URL's password is shown as *** (the
# package's redaction; sed's simpler one where the interpreter lacks the package), so that a
# dry run in a CI log leaks none; the command run keeps it.
do_cmd() {
  if [ "$dry_run" = 1 ]; then
    printf '%q ' "$@" | redacted
    printf '\n'
  else
    "$@"
  fi
}

redacted() {
  "$python" -P -c 'import sys; from synanno_datagen.errors import redact; sys.stdout.write(redact(sys.stdin.read()))' 2>/dev/null \
    || sed -E 's#(://[^/:@ ]*):[^@ ]*@#\1:***@#g'
}

check_job_name() {
  [[ "$1" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] \
    || usage_error "JOB_NAME '$1' must be lowercase letters, digits and hyphens"
}

run_job() {
  local job_name="${JOB_NAME:-synanno-datagen-$(date -u +%Y%m%d-%H%M%S)}"
  check_job_name "$job_name"
  check_python
  # the workers get the clone's code (--setup_file): the launcher must run the same
  "$python" -P "$here/pipeline/staging.py" "$here" || exit "$?"
  "$python" -c 'import setuptools' >/dev/null 2>&1 \
    || usage_error "$python has no setuptools, which Beam needs to build the package it stages for the workers (venvs of Python 3.12+ come without it): $python -m pip install setuptools"
  local cmd=("$python" -P -m synanno_datagen run "$@"
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
    echo "launch_dataflow.sh: run: checking the run, then submitting job $job_name to $PROJECT/$REGION" >&2
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
  check_python
  local body
  body="$("$python" -P -m synanno_datagen.pipeline.flex body --template-path "$template_path" \
    --metadata-file "$here/metadata.json" --job-name "$job_name" --temp-location "$root/synanno-datagen/temp" \
    --staging-location "$root/synanno-datagen/staging" --service-account "$SERVICE_ACCOUNT" \
    --max-workers "${MAX_WORKERS:-}" --machine-type "${MACHINE_TYPE:-}" \
    --network "${NETWORK:-}" --sdk-container-image "$image" -- "$@")" \
    || exit "$?"   # (its one line says what is wrong)
  local uri="https://dataflow.googleapis.com/v1b3/projects/$PROJECT/locations/$REGION/flexTemplates:launch"
  local verb=create headers=--headers
  if [ "$dry_run" = 1 ]; then
    echo "# if 'gcloud scheduler jobs describe $scheduler_job --project $PROJECT --location $REGION' finds the job, it is updated: 'gcloud scheduler jobs update http' with --update-headers instead of --headers"
  elif gcloud scheduler jobs describe "$scheduler_job" --project "$PROJECT" \
      --location "$REGION" >/dev/null 2>&1; then
    verb=update headers=--update-headers
  fi
  do_cmd gcloud scheduler jobs "$verb" http "$scheduler_job" --project "$PROJECT" \
    --location "$REGION" --schedule "${SCHEDULE:-0 2 * * *}" --time-zone "${TIME_ZONE:-Etc/UTC}" \
    --uri "$uri" --http-method POST "$headers" Content-Type=application/json \
    --oauth-service-account-email "$SERVICE_ACCOUNT" \
    --oauth-token-scope https://www.googleapis.com/auth/cloud-platform --message-body "$body"
}

# gcloud could not be asked (network, expired login): the job's state is unknown, exit 5.
gcloud_failed() {
  echo "launch_dataflow.sh: gcloud failed, so the state of $1 is unknown (exit 5, not the job's failure); check the network and 'gcloud auth login', then ask again" >&2
  exit 5
}

# The newest job named $1 (a nightly launch reuses its name): "NAME ID STATE" on stdout; exit 0
# when it is done, 1 when it ended otherwise, 4 while it runs (with --wait: poll until it ends),
# 5 when gcloud fails (with --wait: three polls in a row).
job_status() {
  local wait=0 names=()
  for arg in "$@"; do
    case "$arg" in
      --wait) wait=1 ;;
      -*) usage_error "status: unknown option $arg (status [--wait] [JOB_NAME])" ;;
      *) names+=("$arg") ;;
    esac
  done
  [ "${#names[@]}" -le 1 ] || usage_error "status takes at most one JOB_NAME (got ${names[*]})"
  local name="${names[0]:-${JOB_NAME:-synanno-datagen-nightly}}"
  # every job of that exact name, newest first: gcloud lists 100 unless told, cut before it
  # sorts (in the service's order), so after 100 nights the newest could be left out
  local list=(gcloud dataflow jobs list --project "$PROJECT" --region "$REGION"
    --filter "name~^$name\$" --limit unlimited --sort-by "~creationTime" --format "value(id)")
  if [ "$dry_run" = 1 ]; then
    do_cmd "${list[@]}"
    do_cmd gcloud dataflow jobs describe JOB_ID --project "$PROJECT" --region "$REGION" \
      --format "value(currentState)"
    return 0
  fi
  local id state failures=0
  until id="$("${list[@]}")"; do
    failures=$((failures + 1))
    if [ "$wait" = 0 ] || [ "$failures" -ge 3 ]; then gcloud_failed "the jobs named $name"; fi
    sleep "${POLL_SECONDS:-60}"
  done
  failures=0
  id="${id%%$'\n'*}"   # the first line: the newest
  [ -n "$id" ] || usage_error "no Dataflow job named $name in $PROJECT/$REGION"
  while true; do
    if ! state="$(gcloud dataflow jobs describe "$id" --project "$PROJECT" --region "$REGION" \
        --format "value(currentState)")"; then
      failures=$((failures + 1))
      if [ "$wait" = 0 ] || [ "$failures" -ge 3 ]; then gcloud_failed "job $name $id"; fi
      sleep "${POLL_SECONDS:-60}"
      continue
    fi
    failures=0
    echo "$name $id $state"
    case "$state" in
      JOB_STATE_DONE) return 0 ;;
      JOB_STATE_FAILED|JOB_STATE_CANCELLED|JOB_STATE_DRAINED|JOB_STATE_UPDATED) exit 1 ;;
    esac
    [ "$wait" = 1 ] || exit 4
    sleep "${POLL_SECONDS:-60}"
  done
}

case "$action" in
  run) run_job "$@" ;;
  build-template) build_template ;;
  schedule) schedule "$@" ;;
  status) job_status "$@" ;;
esac
