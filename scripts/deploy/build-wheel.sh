#!/usr/bin/env bash
# Build the chargectl wheel (the one artifact every deploy ships) into dist/.
#
#   build-wheel.sh [--out DIR] [--dry-run]
#
# Older chargectl wheels in DIR are removed first, so DIR holds exactly the wheel just built.
# PYTHON selects the interpreter (default python3).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$HERE/lib.sh"

OUT=$ROOT/dist
PYTHON=${PYTHON:-python3}

while [[ $# -gt 0 ]]; do
	case $1 in
	--out) need_arg "$@"; OUT=$2; shift 2 ;;
	--dry-run) DRY_RUN=1; shift ;;
	-h | --help) sed -n '2,7p' "$0"; exit 0 ;;
	*) die "unknown argument: $1" ;;
	esac
done

run mkdir -p "$OUT"
run find "$OUT" -maxdepth 1 -name 'chargectl-*.whl' -delete
run "$PYTHON" -m pip wheel --no-deps --wheel-dir "$OUT" "$ROOT"
if [[ $DRY_RUN == 0 ]]; then
	ls "$OUT"/chargectl-*.whl
fi
