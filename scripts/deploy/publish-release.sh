#!/usr/bin/env bash
# Publish a tagged release's agent artifacts on GitHub: the wheel and the Pi installer.
#
#   publish-release.sh TAG WHEEL [--dry-run]
#
# TAG must be v<version of WHEEL>. The installer tarball holds install-agent.sh and lib.sh; a Pi
# fetches both assets with `gh release download TAG` (README, Deploying). Site bundles hold private
# keys and are never published. Needs GH_TOKEN (the workflow's own token) and `gh`.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$HERE/lib.sh"

TAG=""
WHEEL=""
while [[ $# -gt 0 ]]; do
	case $1 in
	--dry-run) DRY_RUN=1; shift ;;
	-h | --help) sed -n '2,8p' "$0"; exit 0 ;;
	-*) die "unknown option: $1" ;;
	*)
		if [[ -z $TAG ]]; then TAG=$1
		elif [[ -z $WHEEL ]]; then WHEEL=$1
		else die "unexpected argument: $1"
		fi
		shift
		;;
	esac
done

[[ -n $TAG && -n $WHEEL ]] || die "usage: publish-release.sh TAG WHEEL [--dry-run]"
version=$(wheel_version "$WHEEL") || exit 1
[[ $TAG == "v$version" ]] || die "tag $TAG does not match the wheel's version $version (expected v$version)"
if [[ $DRY_RUN == 0 ]]; then
	[[ -f $WHEEL ]] || die "wheel not found: $WHEEL"
	command -v gh >/dev/null || die "gh is not installed"
fi

INSTALLER=$ROOT/build/release/chargectl-agent-installer-$version.tar.gz
tag_q=$(quote "$TAG")
run mkdir -p "$ROOT/build/release"
run tar -czf "$INSTALLER" -C "$HERE" install-agent.sh lib.sh
run_sh "gh release view $tag_q >/dev/null 2>&1 || gh release create $tag_q --verify-tag --title $(quote "chargectl $version") --generate-notes"
run gh release upload "$TAG" "$WHEEL" "$INSTALLER" --clobber
