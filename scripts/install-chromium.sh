#!/bin/sh
# Install headless Chromium, which the report tests and benchmarks/view.py render `mirrorl view`'s
# page with, unless it is already there. Idempotent and quiet. Needs root and apt-get; without them
# it only warns (exit 0), and those tests skip saying why. mirrorl itself never needs a browser.
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q chromium >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }
fi
command -v chromium >/dev/null 2>&1 || echo "install-chromium.sh: could not install chromium; the tests that render the HTML report will skip" >&2
exit 0
