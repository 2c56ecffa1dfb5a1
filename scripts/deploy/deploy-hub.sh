#!/usr/bin/env bash
# Deploy a chargectl wheel to the hub VM over IAP-tunnelled SSH (OS Login), then restart the hub.
#
#   deploy-hub.sh --wheel dist/chargectl-X-py3-none-any.whl --project P --zone Z
#                 [--instance chargectl-hub] [--unit-file scripts/systemd/chargectl-hub.service] [--dry-run]
#
# Copies the wheel, the unit file and install-hub.sh to the VM, and runs install-hub.sh there as root:
# it installs into the hub's virtualenv, restarts chargectl-hub.service and waits for /healthz.
# Uses whatever gcloud credentials are active (the deploy workflow's federated identity, or yours).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$HERE/lib.sh"

UNIT=chargectl-hub.service
WHEEL=""
PROJECT=""
ZONE=""
INSTANCE=chargectl-hub
UNIT_FILE=$ROOT/scripts/systemd/$UNIT

while [[ $# -gt 0 ]]; do
	case $1 in
	--wheel) need_arg "$@"; WHEEL=$2; shift 2 ;;
	--project) need_arg "$@"; PROJECT=$2; shift 2 ;;
	--zone) need_arg "$@"; ZONE=$2; shift 2 ;;
	--instance) need_arg "$@"; INSTANCE=$2; shift 2 ;;
	--unit-file) need_arg "$@"; UNIT_FILE=$2; shift 2 ;;
	--dry-run) DRY_RUN=1; shift ;;
	-h | --help) sed -n '2,10p' "$0"; exit 0 ;;
	*) die "unknown argument: $1" ;;
	esac
done

[[ -n $WHEEL ]] || die "--wheel is required"
[[ -n $PROJECT ]] || die "--project is required"
[[ -n $ZONE ]] || die "--zone is required"
wheel_version "$WHEEL" >/dev/null
if [[ $DRY_RUN == 0 ]]; then
	[[ -f $WHEEL ]] || die "wheel not found: $WHEEL (build it with scripts/deploy/build-wheel.sh)"
	[[ -f $UNIT_FILE ]] || die "unit file not found: $UNIT_FILE"
	command -v gcloud >/dev/null || die "gcloud is not installed"
fi

# Everything the VM needs goes over in one directory, landing in the SSH user's home.
STAGE=$ROOT/build/hub-deploy/chargectl-deploy
REMOTE=chargectl-deploy
WHEEL_NAME=$(basename "$WHEEL")
remote_cmd=$(quote sudo bash "$REMOTE/install-hub.sh" --wheel "$REMOTE/$WHEEL_NAME" --unit-file "$REMOTE/$UNIT")
remote_cmd="$remote_cmd && rm -rf $REMOTE"
gcloud_target=(--project "$PROJECT" --zone "$ZONE" --tunnel-through-iap --quiet)

run rm -rf "$STAGE"
run mkdir -p "$STAGE"
run cp "$WHEEL" "$HERE/lib.sh" "$HERE/install-hub.sh" "$STAGE/"
run cp "$UNIT_FILE" "$STAGE/$UNIT"
run gcloud compute scp "${gcloud_target[@]}" --recurse "$STAGE" "$INSTANCE:"
run gcloud compute ssh "$INSTANCE" "${gcloud_target[@]}" --command "$remote_cmd"
