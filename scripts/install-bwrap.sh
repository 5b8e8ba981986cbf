#!/bin/sh
# Install bubblewrap, the code sandbox's isolation layer, unless `bwrap` is already there.
# Without root and apt-get it only warns (exit 0), and the sandbox then refuses to run programs
# (SandboxUnavailable) unless backend 'none' is chosen explicitly (rl.reward=code_unprotected, or
# --backend none): unprotected, rlimits and cgroups only.
exec sh "$(dirname "$0")/apt-install.sh" bubblewrap bwrap "install-bwrap.sh: could not install bubblewrap; the code sandbox will refuse to run programs (backend 'none', rl.reward=code_unprotected, is the explicit unprotected choice)"
