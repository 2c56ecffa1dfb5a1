#!/usr/bin/env bash
# Deploy the payments webhook as the Cloud Run service chargectl-payments-webhook, built from the wheel.
#
#   deploy-webhook.sh --wheel dist/chargectl-X-py3-none-any.whl --project P --region R
#                     [--runtime-account EMAIL] [--build-account EMAIL]
#                     [--stripe-key-secret NAME] [--webhook-secret-secret NAME] [--dry-run]
#
# Stages the wheel and webhook.Dockerfile in build/webhook-source and runs `gcloud run deploy --source`
# on it (Cloud Build builds the image). Stripe keys come from Secret Manager as environment variables;
# the store is Firestore in the same project. Public access is a one-time IAM binding (README).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$HERE/lib.sh"

SERVICE=chargectl-payments-webhook
WHEEL=""
PROJECT=""
REGION=""
RUNTIME_ACCOUNT=""
BUILD_ACCOUNT=""
STRIPE_KEY_SECRET=chargectl-stripe-api-key
WEBHOOK_SECRET_SECRET=chargectl-stripe-webhook-secret

while [[ $# -gt 0 ]]; do
	case $1 in
	--wheel) need_arg "$@"; WHEEL=$2; shift 2 ;;
	--project) need_arg "$@"; PROJECT=$2; shift 2 ;;
	--region) need_arg "$@"; REGION=$2; shift 2 ;;
	--runtime-account) need_arg "$@"; RUNTIME_ACCOUNT=$2; shift 2 ;;
	--build-account) need_arg "$@"; BUILD_ACCOUNT=$2; shift 2 ;;
	--stripe-key-secret) need_arg "$@"; STRIPE_KEY_SECRET=$2; shift 2 ;;
	--webhook-secret-secret) need_arg "$@"; WEBHOOK_SECRET_SECRET=$2; shift 2 ;;
	--dry-run) DRY_RUN=1; shift ;;
	-h | --help) sed -n '2,11p' "$0"; exit 0 ;;
	*) die "unknown argument: $1" ;;
	esac
done

[[ -n $WHEEL ]] || die "--wheel is required"
[[ -n $PROJECT ]] || die "--project is required"
[[ -n $REGION ]] || die "--region is required"
wheel_version "$WHEEL" >/dev/null
if [[ $DRY_RUN == 0 ]]; then
	[[ -f $WHEEL ]] || die "wheel not found: $WHEEL (build it with scripts/deploy/build-wheel.sh)"
	command -v gcloud >/dev/null || die "gcloud is not installed"
fi
RUNTIME_ACCOUNT=${RUNTIME_ACCOUNT:-chargectl-webhook@$PROJECT.iam.gserviceaccount.com}
BUILD_ACCOUNT=${BUILD_ACCOUNT:-chargectl-build@$PROJECT.iam.gserviceaccount.com}

STAGE=$ROOT/build/webhook-source
run rm -rf "$STAGE"
run mkdir -p "$STAGE"
run cp "$WHEEL" "$STAGE/"
run cp "$HERE/webhook.Dockerfile" "$STAGE/Dockerfile"
run gcloud run deploy "$SERVICE" \
	--source "$STAGE" \
	--project "$PROJECT" \
	--region "$REGION" \
	--service-account "$RUNTIME_ACCOUNT" \
	--build-service-account "projects/$PROJECT/serviceAccounts/$BUILD_ACCOUNT" \
	--set-env-vars "CHARGECTL_BACKEND=gcp,CHARGECTL_PROJECT=$PROJECT" \
	--set-secrets "STRIPE_API_KEY=$STRIPE_KEY_SECRET:latest,STRIPE_WEBHOOK_SECRET=$WEBHOOK_SECRET_SECRET:latest" \
	--quiet
