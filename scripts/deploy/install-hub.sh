#!/usr/bin/env bash
# Install or upgrade the hub on its VM (run as root on the VM; deploy-hub.sh copies this over and runs it).
#
#   install-hub.sh --wheel chargectl-X-py3-none-any.whl [--unit-file chargectl-hub.service]
#                  [--config /etc/chargectl/hub.toml] [--health-url URL] [--timeout-s 120] [--dry-run]
#
# Creates the chargectl system user (the unit's User=, owner of /var/lib/chargectl), installs the
# wheel with the [all] extra into /opt/chargectl and the systemd unit, restarts chargectl-hub.service
# and waits until the hub's /healthz answers (port: the config's [hub] health_port, default 8787).
# The config is the operator's (README, Deploying; group chargectl, 0640); it must exist first.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$HERE/lib.sh"

UNIT=chargectl-hub.service
WHEEL=""
UNIT_FILE=""
HEALTH_URL=""
TIMEOUT_S=120
CONFIG=""

while [[ $# -gt 0 ]]; do
	case $1 in
	--wheel) need_arg "$@"; WHEEL=$2; shift 2 ;;
	--unit-file) need_arg "$@"; UNIT_FILE=$2; shift 2 ;;
	--config) need_arg "$@"; CONFIG=$2; shift 2 ;;
	--health-url) need_arg "$@"; HEALTH_URL=$2; shift 2 ;;
	--timeout-s) need_arg "$@"; TIMEOUT_S=$2; shift 2 ;;
	--dry-run) DRY_RUN=1; shift ;;
	-h | --help) sed -n '2,11p' "$0"; exit 0 ;;
	*) die "unknown argument: $1" ;;
	esac
done

CONFIG=${CONFIG:-$CONFIG_DIR/hub.toml}
[[ -n $WHEEL ]] || die "--wheel is required"
[[ $TIMEOUT_S =~ ^[0-9]+$ ]] || die "--timeout-s must be a whole number of seconds, got '$TIMEOUT_S'"
if [[ $DRY_RUN == 0 ]]; then
	[[ $EUID == 0 ]] || die "run as root (sudo)"
	[[ -f $WHEEL ]] || die "wheel not found: $WHEEL"
	[[ -z $UNIT_FILE || -f $UNIT_FILE ]] || die "unit file not found: $UNIT_FILE"
	[[ -f $CONFIG ]] || die "$CONFIG is missing: write the hub's config first (README, Deploying)"
fi

if [[ -z $HEALTH_URL ]]; then
	# [hub] health_port from the config, 8787 when unset (or when the config is not readable here).
	port=8787
	if [[ -r $CONFIG ]]; then
		port=$(python3 -c 'import sys, tomllib
port = tomllib.load(open(sys.argv[1], "rb")).get("hub", {}).get("health_port", 8787)
if not (isinstance(port, int) and 0 < port < 65536):
    sys.exit(1)
print(port)' "$CONFIG" 2>/dev/null) || die "cannot read [hub] health_port from $CONFIG"
	fi
	HEALTH_URL=http://127.0.0.1:$port/healthz
fi

ensure_service_user
ensure_config_dir
ensure_state_dir
install_wheel "$WHEEL" all
if [[ -n $UNIT_FILE ]]; then
	install_unit "$UNIT_FILE" "$UNIT"
else
	run systemctl restart "$UNIT"
fi

wait_for "$UNIT" "$TIMEOUT_S" "healthy ($HEALTH_URL)" curl --fail --silent --show-error --max-time 5 "$HEALTH_URL"
