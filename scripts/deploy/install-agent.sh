#!/usr/bin/env bash
# Install or upgrade the site agent on a Raspberry Pi from its bundle (run as root on the Pi).
#
#   install-agent.sh BUNDLE_DIR|BUNDLE.tar.gz [--wheel WHEEL_FILE_OR_URL] [--dry-run]
#
# The bundle (from `chargectl provision site`) holds the agent's TOML config, its keys and
# chargectl-agent.service. Its files go to /etc/chargectl (root's, group chargectl: 0640, public keys
# 0644), the config as agent.toml; the wheel (--wheel, else one in the bundle) goes into the
# /opt/chargectl virtualenv with the [agent] extra; the unit runs as the chargectl system user (created
# here), which owns /var/lib/chargectl. Rerun with a new bundle after a key rotation, or with a new
# wheel to upgrade: the agent's state in /var/lib/chargectl (spool, batch sequence) is kept.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$HERE/lib.sh"

UNIT=chargectl-agent.service
BUNDLE=""
WHEEL=""
TIMEOUT_S=60

while [[ $# -gt 0 ]]; do
	case $1 in
	--wheel) need_arg "$@"; WHEEL=$2; shift 2 ;;
	--timeout-s) need_arg "$@"; TIMEOUT_S=$2; shift 2 ;;
	--dry-run) DRY_RUN=1; shift ;;
	-h | --help) sed -n '2,11p' "$0"; exit 0 ;;
	-*) die "unknown option: $1" ;;
	*) [[ -z $BUNDLE ]] || die "one bundle only (got '$BUNDLE' and '$1')"; BUNDLE=$1; shift ;;
	esac
done

[[ -n $BUNDLE ]] || die "give the bundle directory or tarball"
[[ -e $BUNDLE ]] || die "bundle not found: $BUNDLE"
[[ $TIMEOUT_S =~ ^[0-9]+$ ]] || die "--timeout-s must be a whole number of seconds, got '$TIMEOUT_S'"
[[ $DRY_RUN == 1 || $EUID == 0 ]] || die "run as root (sudo)"

if [[ -f $BUNDLE ]]; then
	# Unpacked privately to read it, in a dry run too; the plan copies from there.
	unpacked=$(mktemp -d)
	trap 'rm -rf "$unpacked"' EXIT
	tar -xzf "$BUNDLE" -C "$unpacked" || die "cannot unpack $BUNDLE (expected a .tar.gz bundle)"
	BUNDLE=$unpacked
	# A tarball of one top-level directory: the bundle is that directory.
	entries=("$BUNDLE"/*)
	if [[ ${#entries[@]} == 1 && -d ${entries[0]} ]]; then
		BUNDLE=${entries[0]}
	fi
fi
[[ -d $BUNDLE ]] || die "bundle is neither a directory nor a .tar.gz: $BUNDLE"

configs=() wheels=() unit_file="" files=()
while IFS= read -r -d '' f; do
	rel=${f#"$BUNDLE"/}
	case $rel in
	*.toml) configs+=("$rel") ;;
	*.whl) wheels+=("$f") ;;
	"$UNIT") unit_file=$f ;;
	*.service) die "bundle has an unexpected unit '$rel' (expected $UNIT)" ;;
	*) files+=("$rel") ;;
	esac
done < <(find "$BUNDLE" -type f -print0 | sort -z)

[[ ${#configs[@]} == 1 ]] || die "bundle must hold exactly one .toml config, found ${#configs[@]} in $BUNDLE"
[[ -n $unit_file ]] || die "bundle has no $UNIT"
if [[ -z $WHEEL ]]; then
	[[ ${#wheels[@]} == 1 ]] || die "no --wheel given and the bundle holds ${#wheels[@]} wheels (need exactly one)"
	WHEEL=${wheels[0]}
fi
wheel_version "${WHEEL##*/}" >/dev/null
[[ $DRY_RUN == 1 || $WHEEL == http*://* || -f $WHEEL ]] || die "wheel not found: $WHEEL"

ensure_service_user
ensure_config_dir
ensure_state_dir
install_wheel "$WHEEL" agent
# Relative key paths in the config resolve against its directory, so the bundle's layout is kept.
# Public keys are world-readable; the config and private keys are root's, readable by the service's
# group only (the agent runs as the chargectl user).
for rel in "${files[@]}"; do
	mode=0640
	[[ $rel == *.pub ]] && mode=0644
	run install -D -o root -g "$SERVICE_USER" -m "$mode" "$BUNDLE/$rel" "$CONFIG_DIR/$rel"
done
run install -o root -g "$SERVICE_USER" -m 0640 "$BUNDLE/${configs[0]}" "$CONFIG_DIR/agent.toml"
install_unit "$unit_file" "$UNIT"

wait_for "$UNIT" "$TIMEOUT_S" active systemctl is-active --quiet "$UNIT"
