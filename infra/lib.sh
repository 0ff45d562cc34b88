#!/usr/bin/env bash
# Shared helpers for the Fleet infra scripts. Source it, do not run it:
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# Provides: say, warn, die, have_cmd, need_cmd, as_root, apt_install,
# ensure_cmds, wait_for, tcp_open, http_ok.

if [[ -n "${FLEET_LIB_SH_LOADED:-}" ]]; then
    return 0
fi
FLEET_LIB_SH_LOADED=1

# Name shown in front of every message (the calling script's name).
FLEET_LOG_TAG="${FLEET_LOG_TAG:-$(basename "${0:-fleet}")}"

# say MESSAGE... : progress message on stderr, with a timestamp.
say() {
    printf '[%s %s] %s\n' "$(date +%H:%M:%S)" "$FLEET_LOG_TAG" "$*" >&2
}

# warn MESSAGE... : warning on stderr.
warn() {
    printf '[%s %s] WARNING: %s\n' "$(date +%H:%M:%S)" "$FLEET_LOG_TAG" "$*" >&2
}

# die MESSAGE... : error on stderr, exit 1.
die() {
    printf '[%s %s] ERROR: %s\n' "$(date +%H:%M:%S)" "$FLEET_LOG_TAG" "$*" >&2
    exit 1
}

# have_cmd CMD : true when CMD is on PATH.
have_cmd() {
    command -v "$1" >/dev/null 2>&1
}

# need_cmd CMD [HINT] : die unless CMD is on PATH.
need_cmd() {
    if ! have_cmd "$1"; then
        die "required command '$1' not found${2:+ ($2)}"
    fi
}

# as_root CMD... : run CMD as root (directly when already root, else via sudo -n).
as_root() {
    if [[ "$(id -u)" -eq 0 ]]; then
        "$@"
    elif have_cmd sudo; then
        sudo -n -- "$@"
    else
        die "must run as root (or with password-less sudo) to run: $*"
    fi
}

# apt_install PKG... : install Debian packages; runs 'apt-get update' at most once
# per run (FLEET_APT_UPDATED is exported so child scripts do not repeat it).
apt_install() {
    need_cmd apt-get "this script supports Debian/Ubuntu only"
    if [[ -z "${FLEET_APT_UPDATED:-}" ]]; then
        say "apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
            || die "apt-get update failed"
        FLEET_APT_UPDATED=1
        export FLEET_APT_UPDATED
    fi
    say "apt-get install $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
        || die "apt-get install $* failed"
}

# ensure_cmds CMD:PKG... : install PKG for every CMD that is missing (one apt-get call).
ensure_cmds() {
    local spec cmd pkg
    local -a missing=()
    for spec in "$@"; do
        cmd="${spec%%:*}"
        pkg="${spec#*:}"
        if ! have_cmd "$cmd"; then
            missing+=("$pkg")
        fi
    done
    if ((${#missing[@]} > 0)); then
        apt_install "${missing[@]}"
    fi
    for spec in "$@"; do
        need_cmd "${spec%%:*}" "package ${spec#*:}"
    done
}

# wait_for [-t SECS] [-i SECS] [-m WHAT] [--] CMD... :
#   run CMD (output captured) until it succeeds or the deadline passes.
#   Defaults: -t "${WAIT_TIMEOUT:-60}", -i 1, -m "CMD". Returns 0 on success;
#   on timeout prints the last output of CMD and returns 1.
wait_for() {
    local timeout="${WAIT_TIMEOUT:-60}" interval=1 what=""
    while (($# > 0)); do
        case "$1" in
            -t) timeout="$2"; shift 2 ;;
            -i) interval="$2"; shift 2 ;;
            -m) what="$2"; shift 2 ;;
            --) shift; break ;;
            *) break ;;
        esac
    done
    (($# > 0)) || die "wait_for: no command given"
    [[ -n "$what" ]] || what="$*"

    local deadline=$((SECONDS + timeout)) out="" announced=0
    while true; do
        if out="$("$@" 2>&1)"; then
            if ((announced)); then
                say "... $what: ok"
            fi
            return 0
        fi
        if ((SECONDS >= deadline)); then
            warn "timed out after ${timeout}s waiting for $what"
            if [[ -n "$out" ]]; then
                printf '%s\n' "$out" | tail -n 20 | sed 's/^/    | /' >&2
            fi
            return 1
        fi
        if ((!announced)); then
            say "waiting (up to ${timeout}s) for $what ..."
            announced=1
        fi
        sleep "$interval"
    done
}

# tcp_open HOST PORT : true when something accepts TCP connections on HOST:PORT.
tcp_open() {
    # shellcheck disable=SC2016 # $1/$2 expand in the inner shell
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

# http_ok URL [CURL ARGS...] : true when URL answers 2xx within 3 seconds.
http_ok() {
    local url="$1"
    shift
    curl -fsS -o /dev/null --max-time 3 "$@" "$url"
}
