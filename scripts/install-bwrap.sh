#!/usr/bin/env bash
# Installs bubblewrap (the code sandbox's launcher) from the distribution when it is missing.
# Needs root or sudo; without either it says so and leaves the sandbox to report what is missing.
set -euo pipefail
command -v bwrap >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
  echo "install-bwrap: not root and no sudo; install bubblewrap yourself for the code sandbox" >&2; exit 0; fi
if command -v apt-get >/dev/null 2>&1; then
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq bubblewrap >/dev/null
elif command -v dnf >/dev/null 2>&1; then $SUDO dnf install -y -q bubblewrap
else echo "install-bwrap: no apt-get or dnf; install bubblewrap yourself" >&2; fi
