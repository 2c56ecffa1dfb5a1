#!/usr/bin/env bash
# Deploy the app API server (`chargectl app serve`: the /v1 API, the Stripe webhook at /stripe/webhook and
# the auto top-up sweep) as the Cloud Run service chargectl-payments-webhook, built from the wheel.
#
#   deploy-webhook.sh --wheel dist/chargectl-X-py3-none-any.whl --project P --region R
#                     [--firebase-project ID] [--allowed-origin https://app.example.com]... [--app-url URL]
#                     [--runtime-account EMAIL] [--build-account EMAIL]
#                     [--stripe-key-secret NAME] [--webhook-secret-secret NAME] [--dry-run]
#
# Stages the wheel and webhook.Dockerfile in build/webhook-source and runs `gcloud run deploy --source`
# on it (Cloud Build builds the image). Stripe keys come from Secret Manager as environment variables;
# the store is Firestore in the same project. One instance always runs with CPU always allocated, so the
# periodic auto top-up sweep runs between requests. Public access is a one-time IAM binding (README).
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
FIREBASE_PROJECT=""
APP_URL=""
ORIGINS=()

while [[ $# -gt 0 ]]; do
	case $1 in
	--wheel) need_arg "$@"; WHEEL=$2; shift 2 ;;
	--project) need_arg "$@"; PROJECT=$2; shift 2 ;;
	--region) need_arg "$@"; REGION=$2; shift 2 ;;
	--runtime-account) need_arg "$@"; RUNTIME_ACCOUNT=$2; shift 2 ;;
	--build-account) need_arg "$@"; BUILD_ACCOUNT=$2; shift 2 ;;
	--stripe-key-secret) need_arg "$@"; STRIPE_KEY_SECRET=$2; shift 2 ;;
	--webhook-secret-secret) need_arg "$@"; WEBHOOK_SECRET_SECRET=$2; shift 2 ;;
	--firebase-project) need_arg "$@"; FIREBASE_PROJECT=$2; shift 2 ;;
	--allowed-origin) need_arg "$@"; ORIGINS+=("$2"); shift 2 ;;
	--app-url) need_arg "$@"; APP_URL=$2; shift 2 ;;
	--dry-run) DRY_RUN=1; shift ;;
	-h | --help) sed -n '2,13p' "$0"; exit 0 ;;
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
FIREBASE_PROJECT=${FIREBASE_PROJECT:-$PROJECT}
origin_list=""
for origin in "${ORIGINS[@]}"; do
	[[ $origin =~ ^https?://[^/@[:space:]]+$ ]] || die "--allowed-origin must be like https://app.example.com, got $origin"
	origin_list+="${origin_list:+,}\"$origin\""
done
# ';' separates the variables (gcloud's alternate delimiter) because the origin list contains commas.
ENV_VARS="^;^CHARGECTL_BACKEND=gcp;CHARGECTL_PROJECT=$PROJECT;CHARGECTL_APP__PROJECT_ID=$FIREBASE_PROJECT"
ENV_VARS+=";CHARGECTL_APP__ALLOWED_ORIGINS=[$origin_list]"
# Cloud Run's front end appends the client's address to X-Forwarded-For: the per-address limit keys on it.
ENV_VARS+=";CHARGECTL_APP__FORWARDED_HOPS=1"
[[ -z $APP_URL ]] || ENV_VARS+=";CHARGECTL_PAYMENTS__APP_URL=$APP_URL"
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
	--set-env-vars "$ENV_VARS" \
	--min-instances 1 \
	--no-cpu-throttling \
	--set-secrets "STRIPE_API_KEY=$STRIPE_KEY_SECRET:latest,STRIPE_WEBHOOK_SECRET=$WEBHOOK_SECRET_SECRET:latest" \
	--quiet
