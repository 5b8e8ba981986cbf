#!/bin/sh
# apt-install.sh PACKAGE COMMAND WARNING: install Debian PACKAGE unless COMMAND is already on PATH.
# Idempotent and quiet. Needs root and apt-get; without them, or when the install fails, it prints
# WARNING and still exits 0 (what needs the package then refuses or skips, saying why).
package=$1 command=$2 warning=$3
command -v "$command" >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "$package" >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "$package" >/dev/null 2>&1; }
fi
command -v "$command" >/dev/null 2>&1 || echo "$warning" >&2
exit 0
