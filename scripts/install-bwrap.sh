#!/bin/sh
# Install bubblewrap, the code sandbox's isolation layer, unless `bwrap` is already there.
# Idempotent and quiet. Needs root and apt-get; without them it only warns (exit 0), and the
# sandbox runs in its fallback mode (rlimits and cgroups), which it reports at start.
command -v bwrap >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q bubblewrap >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q bubblewrap >/dev/null 2>&1; }
fi
command -v bwrap >/dev/null 2>&1 || echo "install-bwrap.sh: could not install bubblewrap; the code sandbox will run unisolated" >&2
exit 0
