# shellcheck shell=bash
# Shared by the deploy scripts: argument helpers and the dry-run switch.
# Every state-changing command goes through `run`, so `--dry-run` prints exactly what would run
# (one shell-quoted command per line, pasteable) and changes nothing.

DRY_RUN=0

die() {
	printf '%s: error: %s\n' "$(basename "$0")" "$*" >&2
	exit 1
}

# Print argv as one line a shell would split back into the same words.
quote() {
	local out=() arg squote="'"
	for arg in "$@"; do
		if [[ $arg =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
			out+=("$arg")
		else
			out+=("'${arg//$squote/$squote\\$squote$squote}'")
		fi
	done
	printf '%s\n' "${out[*]}"
}

run() {
	if [[ $DRY_RUN == 1 ]]; then
		quote "$@"
	else
		printf '+ %s\n' "$(quote "$@")" >&2
		"$@"
	fi
}

# A fixed shell snippet (for `a || b` idempotence guards); printed verbatim in dry-run.
run_sh() {
	if [[ $DRY_RUN == 1 ]]; then
		printf '%s\n' "$1"
	else
		printf '+ %s\n' "$1" >&2
		bash -c "$1"
	fi
}

# need_arg FLAG "$@": a one-line error unless FLAG is followed by a value.
need_arg() {
	[[ $# -ge 2 && -n $2 && $2 != --* ]] || die "$1 needs a value"
}

# The version part of a wheel file name (name-version-py-abi-platform.whl).
wheel_version() {
	local base
	base=$(basename "$1")
	[[ $base == *.whl ]] || die "not a wheel: $1"
	base=${base#*-}
	printf '%s' "${base%%-*}"
}

# ----------------------------------------------------------------------------- on the host (root)
# The layout both the hub VM and a site's Pi use, the one the systemd units expect: the virtualenv
# at /opt/chargectl (so /opt/chargectl/bin/chargectl), config and keys in /etc/chargectl (root's,
# readable by the chargectl group), state in /var/lib/chargectl owned by the chargectl system user the
# units run as (User=chargectl, StateDirectory=chargectl).

VENV=/opt/chargectl
CONFIG_DIR=/etc/chargectl
STATE_DIR=/var/lib/chargectl
SERVICE_USER=chargectl
UNIT_DIR=/etc/systemd/system

# The system user the units run as: no login, no home of its own (its state is $STATE_DIR).
ensure_service_user() {
	run_sh "id -u $SERVICE_USER >/dev/null 2>&1 || useradd --system --user-group --home-dir $STATE_DIR --no-create-home --shell /usr/sbin/nologin $SERVICE_USER"
}

# Root owns the config directory; the service's group may read it (keys and configs are 0640).
ensure_config_dir() {
	run install -d -o root -g "$SERVICE_USER" -m 0750 "$CONFIG_DIR"
}

# State written by an older install that ran as root becomes the service user's.
ensure_state_dir() {
	run install -d -o "$SERVICE_USER" -g "$SERVICE_USER" -m 0700 "$STATE_DIR"
	run chown -R "$SERVICE_USER:$SERVICE_USER" "$STATE_DIR"
}

# install_wheel WHEEL EXTRA: into $VENV (created on first use) with the extra the host needs (agent on
# a Pi, all on the VM). The second pip call reinstalls the package itself even when the version did
# not change, so a redeploy of the same version takes effect.
install_wheel() {
	local venv_q requirement
	venv_q=$(quote "$VENV")
	if [[ $1 == http*://* ]]; then
		requirement="chargectl[$2] @ $1"
	else
		requirement="$1[$2]"
	fi
	run_sh "test -x $venv_q/bin/python || python3 -m venv $venv_q"
	run "$VENV/bin/pip" install --quiet --upgrade "$requirement"
	run "$VENV/bin/pip" install --quiet --no-deps --force-reinstall "$1"
	run ln -sf "$VENV/bin/chargectl" /usr/local/bin/chargectl
}

# install_unit FILE UNIT: the unit file under its canonical name, then (re)start it.
install_unit() {
	run install -o root -g root -m 0644 "$1" "$UNIT_DIR/$2"
	run systemctl daemon-reload
	run systemctl enable "$2"
	run systemctl restart "$2"
}

# wait_for UNIT TIMEOUT_S WHAT CMD...: rerun CMD every 2 s until it succeeds; past TIMEOUT_S, show
# the unit's recent log and fail with "UNIT is not WHAT".
wait_for() {
	local unit=$1 timeout_s=$2 what=$3
	shift 3
	if [[ $DRY_RUN == 1 ]]; then
		printf '%s  # until it succeeds, every 2 s, for up to %s s\n' "$(quote "$@")" "$timeout_s"
		return 0
	fi
	local deadline=$((SECONDS + timeout_s))
	until "$@" >/dev/null 2>&1; do
		if ((SECONDS >= deadline)); then
			journalctl --unit "$unit" --lines 50 --no-pager >&2 || true
			die "$unit is not $what after ${timeout_s}s"
		fi
		sleep 2
	done
	printf '%s is %s\n' "$unit" "$what"
}
