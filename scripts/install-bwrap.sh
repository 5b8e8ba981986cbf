#!/bin/sh
# Install bubblewrap, the code sandbox's isolation layer, unless `bwrap` is already there.
# Idempotent and quiet. Needs root and apt-get; without them it only warns (exit 0), and the
# sandbox then refuses to run programs (SandboxUnavailable) unless backend 'none' is chosen
# explicitly (rl.reward=code_unprotected, or --backend none): unprotected, rlimits and cgroups only.
command -v bwrap >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q bubblewrap >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q bubblewrap >/dev/null 2>&1; }
fi
command -v bwrap >/dev/null 2>&1 || echo "install-bwrap.sh: could not install bubblewrap; the code sandbox will refuse to run programs (backend 'none', rl.reward=code_unprotected, is the explicit unprotected choice)" >&2
exit 0
