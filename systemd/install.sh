#!/usr/bin/env bash
# Install trackd as a systemd service (SPEC §7), or remove it again.
#
#   sudo systemd/install.sh [--api-key-file FILE] [--python PATH]   # or: sudo make install-service
#   systemd/install.sh --dry-run                                     # print every step, change nothing
#   sudo systemd/install.sh --uninstall [--purge]                    # or: sudo make uninstall-service
#
# What it does, in order: a virtualenv in /opt/trackd with this checkout pip-installed into it; the
# `trackd` system user (group adm, for /var/log/nginx; no login shell; home /var/lib/trackd, not
# created: systemd's StateDirectory= makes it); /etc/trackd/trackd.yaml from
# config/trackd.example.yaml unless that file exists (it is never overwritten); the Kissmetrics API
# key as a root-only file /etc/trackd/credentials/api_key, which the unit hands to the service with
# LoadCredential= (asked for on the terminal with the input hidden, or copied from --api-key-file;
# never printed); `trackd check` of the config as the service will see it; the unit; then
# `systemctl daemon-reload` and `systemctl enable --now trackd.service`. Running it again upgrades
# the code and restarts a running service, and keeps the config and the key.
#
# --root DIR installs into DIR instead of / (an image, or a test): every path is under DIR, the
# user goes into DIR/etc/passwd (useradd --root), and the unit is enabled with
# `systemctl --root=DIR` (nothing is started). --no-systemctl leaves systemctl out entirely.
set -euo pipefail
umask 022 # the venv and the config must be readable by the service user whatever sudo passed on

readonly UNIT_NAME=trackd.service
readonly SVC_USER=trackd
readonly LOG_GROUP=adm
readonly VENV=/opt/trackd
readonly ETC_DIR=/etc/trackd
readonly CONFIG=/etc/trackd/trackd.yaml
readonly CRED_DIR=/etc/trackd/credentials
readonly CRED=/etc/trackd/credentials/api_key
readonly UNIT_DST=/etc/systemd/system/trackd.service
readonly STATE_DIR=/var/lib/trackd
readonly PROG=${0##*/}

SRC=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
readonly SRC

usage() {
	cat <<EOF
usage: $PROG [--dry-run] [--api-key-file FILE] [--python PATH] [--root DIR] [--no-systemctl]
       $PROG --uninstall [--purge] [--dry-run] [--root DIR] [--no-systemctl]

Installs trackd as a systemd service: a virtualenv in $VENV, the '$SVC_USER' system user (group
$LOG_GROUP), $CONFIG from config/trackd.example.yaml (an existing one is kept), the
API key as the credential $CRED, and $UNIT_DST, then
'systemctl daemon-reload' and 'systemctl enable --now $UNIT_NAME'.

  --dry-run           print every step, each command as it would run, and change nothing
  --api-key-file FILE copy the Kissmetrics API key from FILE (default: ask on the terminal, input
                      hidden; an existing $CRED is kept)
  --python PATH       the Python >= 3.11 to build the virtualenv from (default: /usr/bin/python3,
                      else python3 on PATH)
  --root DIR          install into DIR instead of / (enables the unit with systemctl --root=DIR)
  --no-systemctl      do not run systemctl at all
  --uninstall         stop and disable the service, remove the unit and $VENV; keep the config,
                      the key, the state ($STATE_DIR) and the user
  --purge             with --uninstall: also remove $ETC_DIR, $STATE_DIR and the user
  -h, --help          this text
EOF
}

die() {
	printf '%s: error: %s\n' "$PROG" "$1" >&2
	exit "${2:-1}"
}

usage_error() {
	printf '%s: %s (see %s --help)\n' "$PROG" "$1" "$PROG" >&2
	exit 2
}

DRY_RUN=0
UNINSTALL=0
PURGE=0
SYSTEMCTL=live # live | root (systemctl --root=DIR) | none
ROOT=""
PYTHON=""
KEY_FILE=""

while (($#)); do
	case $1 in
	--dry-run) DRY_RUN=1 ;;
	--uninstall) UNINSTALL=1 ;;
	--purge) PURGE=1 ;;
	--no-systemctl) SYSTEMCTL=none ;;
	--root | --python | --api-key-file)
		(($# >= 2)) || usage_error "$1 needs a value"
		case $1 in
		--root) ROOT=$2 ;;
		--python) PYTHON=$2 ;;
		--api-key-file) KEY_FILE=$2 ;;
		esac
		shift
		;;
	--root=*) ROOT=${1#*=} ;;
	--python=*) PYTHON=${1#*=} ;;
	--api-key-file=*) KEY_FILE=${1#*=} ;;
	-h | --help)
		usage
		exit 0
		;;
	*) usage_error "unknown option '$1'" ;;
	esac
	shift
done

((PURGE == 0 || UNINSTALL == 1)) || usage_error "--purge only goes with --uninstall"
if ((UNINSTALL)) && [[ -n $KEY_FILE || -n $PYTHON ]]; then
	usage_error "--api-key-file and --python are for installing, not --uninstall"
fi
if [[ -n $ROOT ]]; then
	[[ -d $ROOT ]] || die "--root $ROOT: no such directory" 2
	ROOT=$(cd -- "$ROOT" && pwd)
	[[ $ROOT != / ]] || ROOT=""
fi
if [[ -n $ROOT && $SYSTEMCTL == live ]]; then
	SYSTEMCTL=root
fi
readonly DRY_RUN UNINSTALL PURGE SYSTEMCTL ROOT

# ---- output: every step is a heading, every command is printed as it runs ----------------------

STEP=0
step() {
	STEP=$((STEP + 1))
	printf '\n==> %d. %s\n' "$STEP" "$1"
}

note() { printf '    %s\n' "$1"; }

# show CMD...: print it as a shell would take it (plain words bare, the others single-quoted).
show() {
	local arg out=""
	for arg in "$@"; do
		if [[ $arg =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
			out+=" $arg"
		else
			out+=" '${arg//\'/\'\\\'\'}'"
		fi
	done
	printf '    +%s\n' "$out"
}

# run CMD...: print it, then run it (not in a dry run).
run() {
	show "$@"
	((DRY_RUN)) || "$@"
}

# r PATH: PATH under --root.
r() { printf '%s%s' "$ROOT" "$1"; }

# ---- looking things up in the target system (the files under --root, or /) --------------------

in_passwd() { awk -F: -v n="$1" '$1 == n { found = 1 } END { exit !found }' "$(r /etc/passwd)"; }
group_id() { awk -F: -v n="$1" '$1 == n { print $3; exit }' "$(r /etc/group)"; }
# in_group USER GROUP: USER is a supplementary member of GROUP.
in_group() {
	awk -F: -v u="$1" -v g="$2" '$1 == g { n = split($4, m, ","); for (i = 1; i <= n; i++) if (m[i] == u) found = 1 }
		END { exit !found }' "$(r /etc/group)"
}
# The trackd group for chown/install: its name on /, its number under --root (whose users the
# host's name lookups do not see); the name in a dry run before the user exists.
svc_group() {
	local gid=""
	[[ -z $ROOT ]] || gid=$(group_id "$SVC_USER")
	printf '%s' "${gid:-$SVC_USER}"
}
# useradd/usermod/userdel against the target's user database.
user_tool() {
	local tool=$1
	shift
	if [[ -n $ROOT ]]; then
		run "$tool" --root "$ROOT" "$@"
	else
		run "$tool" "$@"
	fi
}

# ---- checks before anything changes: every problem says what to do -----------------------------

PROBLEMS=0
problem() {
	printf '%s: error: %s\n' "$PROG" "$1" >&2
	PROBLEMS=$((PROBLEMS + 1))
}

# A machine-level condition a dry run only notes (it may preview the steps anywhere).
requirement() {
	if ((DRY_RUN)); then
		printf '    note: %s\n' "$1"
	else
		problem "$1"
	fi
}

check_privileges() {
	if ((EUID != 0)); then
		requirement "this needs root (it creates a system user and writes $VENV, $ETC_DIR and the unit): run 'sudo $0 …' or 'sudo make install-service'"
	fi
	if [[ $SYSTEMCTL == live && ! -d /run/systemd/system ]]; then
		requirement "systemd is not running on this machine (no /run/systemd/system), so systemctl cannot manage trackd here: pass --no-systemctl to leave systemctl out (and $( ((UNINSTALL)) && printf remove || printf install) the files only)"
	fi
}

PY_VERSION=""
check_python() {
	if [[ -z $PYTHON ]]; then
		if [[ -x /usr/bin/python3 ]]; then
			PYTHON=/usr/bin/python3
		else
			PYTHON=$(command -v python3 || true)
		fi
	fi
	if [[ -z $PYTHON ]]; then
		problem "no python3 found: install Python >= 3.11 (Debian/Ubuntu: apt-get install python3 python3-venv), or pass --python /path/to/python3.11"
		return
	fi
	if [[ $PYTHON == */* && ! -x $PYTHON ]]; then
		problem "there is no Python at $PYTHON: pass --python /path/to/python3.11 (or newer)"
		return
	fi
	local info
	if ! info=$("$PYTHON" -c 'import os, sys; print("%d.%d.%d" % sys.version_info[:3]); print(os.path.realpath(sys.executable)); print(os.path.realpath(sys.base_prefix))' 2>/dev/null); then
		problem "$PYTHON does not run as Python: pass --python /path/to/python3.11 (or newer)"
		return
	fi
	local version executable base
	{
		read -r version
		read -r executable
		read -r base
	} <<<"$info"
	if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
		problem "trackd needs Python >= 3.11, and $PYTHON is $version: install a newer one (Debian 12: apt-get install python3) and pass --python /path/to/python3.11"
		return
	fi
	if ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then
		problem "$PYTHON ($version) has no working venv/ensurepip module: on Debian/Ubuntu run 'apt-get install python3-venv' (or python3.X-venv for your version), then run this again"
		return
	fi
	# The unit has ProtectHome=yes and PrivateTmp=yes: an interpreter under these is invisible to
	# the service, and a venv built on it would fail at start with "No such file or directory".
	local where
	for where in "$executable" "$base"; do
		case $where/ in
		/home/* | /root/* | /run/user/* | /tmp/* | /var/tmp/*)
			problem "$PYTHON lives in $where, which the service cannot see (the unit has ProtectHome=yes and PrivateTmp=yes): pass --python /usr/bin/python3 (Debian/Ubuntu: apt-get install python3 python3-venv)"
			return
			;;
		esac
	done
	PY_VERSION=$version
}

check_checkout() {
	local f
	for f in pyproject.toml setup.py README.md agent/cli.py config/trackd.example.yaml systemd/trackd.service; do
		[[ -e $SRC/$f ]] || problem "$SRC is not a trackd checkout ($f is missing): run the install.sh of a complete checkout"
	done
}

check_target() {
	local f
	for f in /etc/passwd /etc/group; do
		[[ -r $(r "$f") ]] || problem "$(r "$f") is missing: --root needs the target system's user database ($f, and shadow/gshadow for useradd)"
	done
	((PROBLEMS == 0)) || return 0
	if [[ -z $(group_id "$LOG_GROUP") ]]; then
		problem "there is no group '$LOG_GROUP': the unit reads /var/log/nginx through it (SupplementaryGroups=$LOG_GROUP); create it with 'groupadd --system $LOG_GROUP' and give it read access to the logs"
	fi
}

API_KEY=""
KEY_SOURCE="" # file | prompt | keep
check_api_key() {
	if [[ -n $KEY_FILE ]]; then
		if [[ -d $KEY_FILE || ! -r $KEY_FILE ]]; then
			problem "cannot read the API key file $KEY_FILE: give a readable file that holds only the key"
			return
		fi
		API_KEY=$(<"$KEY_FILE")
		# Trim the surrounding whitespace (a trailing newline above all); the key itself is one word.
		API_KEY=${API_KEY#"${API_KEY%%[![:space:]]*}"}
		API_KEY=${API_KEY%"${API_KEY##*[![:space:]]}"}
		if [[ -z $API_KEY ]]; then
			problem "the API key file $KEY_FILE is empty: put the Kissmetrics API key in it"
		elif [[ $API_KEY == *[[:space:]]* ]]; then
			problem "the API key file $KEY_FILE holds more than one word: put the key alone in it"
		fi
		KEY_SOURCE="file"
	elif [[ -e $(r "$CRED") ]]; then
		KEY_SOURCE=keep
	else
		KEY_SOURCE=prompt
		if [[ ! -t 0 ]]; then
			requirement "$CRED does not exist and there is no terminal to ask for the API key on: pass --api-key-file FILE (the key is copied from it, never printed)"
		fi
	fi
}

# ---- install ------------------------------------------------------------------------------------

install_user() {
	step "the system user '$SVC_USER' (group $LOG_GROUP, no login shell, home $STATE_DIR)"
	if in_passwd "$SVC_USER"; then
		if in_group "$SVC_USER" "$LOG_GROUP"; then
			note "'$SVC_USER' exists and is in group $LOG_GROUP: nothing to do"
		else
			user_tool usermod --append --groups "$LOG_GROUP" "$SVC_USER"
		fi
		return
	fi
	local shell=/usr/sbin/nologin
	[[ -x $shell ]] || shell=/sbin/nologin
	user_tool useradd --system --user-group --groups "$LOG_GROUP" --home-dir "$STATE_DIR" \
		--no-create-home --shell "$shell" --comment "trackd analytics agent" "$SVC_USER"
}

BUILD=""
cleanup() { [[ -z $BUILD ]] || rm -rf -- "$BUILD"; }
trap cleanup EXIT

install_venv() {
	step "the virtualenv $VENV, with this checkout ($SRC) installed into it"
	run "$PYTHON" -m venv "$(r "$VENV")"
	# pip builds in the source tree: build from a copy, so that a root-run install leaves no
	# root-owned build/ or *.egg-info behind in the user's checkout.
	local build=${TMPDIR:-/tmp}/trackd-build.XXXXXX
	show mktemp -d "$build"
	if ((!DRY_RUN)); then
		BUILD=$(mktemp -d "$build")
		build=$BUILD
		note "-> $build"
	fi
	run cp -R "$SRC/pyproject.toml" "$SRC/setup.py" "$SRC/README.md" "$SRC/agent" "$build/"
	# An extension built in the checkout (`make install`) is for its Python, not this venv's:
	# setup.py builds the native kernel afresh here (or leaves it out without a C compiler).
	run find "$build/agent" -name '*.so' -delete
	run "$(r "$VENV")/bin/python" -m pip install --quiet --disable-pip-version-check "$build"
	# The unit's Documentation= points here.
	run install -m 0644 "$SRC/README.md" "$(r "$VENV")/README.md"
	run "$(r "$VENV")/bin/trackd" --version
}

install_config() {
	step "the config $CONFIG (from config/trackd.example.yaml; an existing one is kept)"
	run install -d -m 0755 -o root -g root "$(r "$ETC_DIR")"
	if [[ -e $(r "$CONFIG") ]]; then
		note "$(r "$CONFIG") exists: kept as it is (never overwritten)"
	else
		run install -m 0640 -o root -g "$(svc_group)" "$SRC/config/trackd.example.yaml" "$(r "$CONFIG")"
	fi
}

install_credential() {
	step "the API key, as the systemd credential $CRED (root only; the unit's LoadCredential=api_key)"
	run install -d -m 0700 -o root -g root "$(r "$CRED_DIR")"
	case $KEY_SOURCE in
	keep)
		note "$(r "$CRED") exists: kept (pass --api-key-file FILE to replace it)"
		return
		;;
	prompt) note "the key typed at the prompt before step 1" ;;
	esac
	# The key goes through stdin, never onto a command line (where ps would show it).
	show install -m 0600 -o root -g root /dev/stdin "$(r "$CRED")"
	note "  (stdin: the key, not shown)"
	((DRY_RUN)) || printf '%s\n' "$API_KEY" | install -m 0600 -o root -g root /dev/stdin "$(r "$CRED")"
}

check_config() {
	step "trackd check of $CONFIG, with the credential the service will get"
	if ((DRY_RUN)); then
		show env "CREDENTIALS_DIRECTORY=$(r "$CRED_DIR")" "$(r "$VENV")/bin/trackd" -c "$(r "$CONFIG")" check
		return
	fi
	if ! run env "CREDENTIALS_DIRECTORY=$(r "$CRED_DIR")" "$(r "$VENV")/bin/trackd" -c "$(r "$CONFIG")" check; then
		local hint=""
		# A config from the old README steps takes the key from ${KM_API_KEY}, which the service lacks.
		if grep -Eq '^[[:space:]]*api_key:[[:space:]]*["'"'"']?[$][{]' "$(r "$CONFIG")"; then
			hint=" (its sink takes api_key from an environment variable the service does not have: delete that api_key: line, and trackd uses the credential $CRED)"
		fi
		die "$(r "$CONFIG") does not pass 'trackd check' (the problems are above)$hint: edit it, then run this again (nothing was started)" 3
	fi
}

install_unit() {
	step "the unit $UNIT_DST"
	run install -D -m 0644 "$SRC/systemd/trackd.service" "$(r "$UNIT_DST")"
	note "(local changes belong in 'systemctl edit $UNIT_NAME', a drop-in this script leaves alone)"
}

start_service() {
	case $SYSTEMCTL in
	none)
		step "systemctl: skipped (--no-systemctl)"
		note "when ready: systemctl daemon-reload && systemctl enable --now $UNIT_NAME"
		;;
	root)
		step "enable $UNIT_NAME in $ROOT (systemctl --root; nothing is started)"
		run systemctl --root="$ROOT" enable "$UNIT_NAME"
		;;
	live)
		step "systemctl daemon-reload, enable --now (and a restart onto the new code if it was running)"
		local was_active=0
		if ((!DRY_RUN)) && systemctl is-active --quiet "$UNIT_NAME"; then
			was_active=1
		fi
		run systemctl daemon-reload
		run systemctl enable --now "$UNIT_NAME" ||
			die "$UNIT_NAME did not start: see 'journalctl -u $UNIT_NAME -n 50'; fix the cause (often $CONFIG), then 'systemctl restart $UNIT_NAME'"
		if ((DRY_RUN)); then
			note "(only if it was already running: an upgrade)"
			show systemctl try-restart "$UNIT_NAME"
		elif ((was_active)); then
			run systemctl try-restart "$UNIT_NAME"
		fi
		if ((!DRY_RUN)); then
			run systemctl is-active "$UNIT_NAME" ||
				die "$UNIT_NAME is not running: see 'journalctl -u $UNIT_NAME -n 50'"
		fi
		;;
	esac
}

install_summary() {
	if ((DRY_RUN)); then
		printf '\ndry run: nothing was changed.\n'
		return
	fi
	if [[ -n $ROOT ]]; then
		printf '\ntrackd is installed in %s%s.\n' "$ROOT" "$([[ $SYSTEMCTL == root ]] && printf ' and enabled: it starts when that system boots')"
		return
	fi
	printf '\ntrackd is installed%s.\n' "$([[ $SYSTEMCTL == live ]] && printf ' and running')"
	cat <<EOF
  status and logs:   systemctl status $UNIT_NAME;  journalctl -u $UNIT_NAME -f
  config:            $CONFIG  (after editing: systemctl reload $UNIT_NAME, which checks it first)
  check by hand:     sudo env CREDENTIALS_DIRECTORY=$CRED_DIR $VENV/bin/trackd -c $CONFIG check
  new API key:       sudo $0 --api-key-file FILE
  remove:            sudo make uninstall-service  (keeps config, key and state; --purge removes them)
EOF
}

do_install() {
	printf 'trackd install%s: from %s into %s\n' "$( ((DRY_RUN)) && printf ' (dry run: nothing is changed)')" "$SRC" "${ROOT:-/}"
	check_privileges
	check_python
	check_checkout
	check_target
	check_api_key
	((PROBLEMS == 0)) || die "nothing was changed: fix the problem(s) above and run this again"
	note "python: $PYTHON ($PY_VERSION)"
	if [[ $KEY_SOURCE == prompt ]]; then
		# Asked first, so that the long part (pip) runs unattended.
		note "asks: Kissmetrics API key (input hidden)"
		if ((!DRY_RUN)); then
			read -r -s -p "    Kissmetrics API key (input hidden): " API_KEY
			printf '\n' >&2
			[[ -n $API_KEY && $API_KEY != *[[:space:]]* ]] || die "no API key given (one word expected): run this again, or pass --api-key-file FILE"
		fi
	fi
	install_user
	install_venv
	install_config
	install_credential
	check_config
	install_unit
	start_service
	install_summary
}

# ---- uninstall ----------------------------------------------------------------------------------

do_uninstall() {
	printf 'trackd uninstall%s%s: from %s\n' "$( ((PURGE)) && printf ' --purge')" "$( ((DRY_RUN)) && printf ' (dry run: nothing is changed)')" "${ROOT:-/}"
	check_privileges
	((PROBLEMS == 0)) || die "nothing was changed: fix the problem(s) above and run this again"

	step "stop and disable $UNIT_NAME, remove the unit"
	if [[ -e $(r "$UNIT_DST") ]]; then
		case $SYSTEMCTL in
		live) run systemctl disable --now "$UNIT_NAME" ;;
		root) run systemctl --root="$ROOT" disable "$UNIT_NAME" ;;
		none) note "systemctl: skipped (--no-systemctl); stop the service yourself" ;;
		esac
		run rm -f "$(r "$UNIT_DST")"
		if [[ $SYSTEMCTL == live ]]; then
			run systemctl daemon-reload
			run systemctl reset-failed "$UNIT_NAME" 2>/dev/null || true
		fi
	else
		note "$(r "$UNIT_DST") is not there: nothing to do"
	fi

	step "remove the virtualenv $VENV"
	if [[ -e $(r "$VENV")/pyvenv.cfg ]]; then
		run rm -rf "$(r "$VENV")"
	elif [[ -e $(r "$VENV") ]]; then
		problem "$(r "$VENV") is not a virtualenv (no pyvenv.cfg), so this script did not make it: left alone, remove it yourself if it should go"
	else
		note "$(r "$VENV") is not there: nothing to do"
	fi

	if ((PURGE)); then
		step "purge: the config and key ($ETC_DIR), the state ($STATE_DIR), the user '$SVC_USER'"
		run rm -rf "$(r "$ETC_DIR")" "$(r "$STATE_DIR")"
		if in_passwd "$SVC_USER"; then
			user_tool userdel "$SVC_USER"
		else
			note "user '$SVC_USER' is not there: nothing to do"
		fi
		# userdel drops the user's own group only where login.defs says USERGROUPS_ENAB yes.
		if ((DRY_RUN)); then
			note "(and the group '$SVC_USER', if userdel left it)"
		elif [[ -n $(group_id "$SVC_USER") ]]; then
			user_tool groupdel "$SVC_USER"
		fi
	else
		step "kept: $ETC_DIR (config, API key), $STATE_DIR (state), the user '$SVC_USER'"
		note "to remove them too: sudo $0 --uninstall --purge"
	fi
	((PROBLEMS == 0)) || exit 1
	if ((DRY_RUN)); then
		printf '\ndry run: nothing was changed.\n'
	else
		printf '\ntrackd is uninstalled.\n'
	fi
}

if ((UNINSTALL)); then
	do_uninstall
else
	do_install
fi
