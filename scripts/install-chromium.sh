#!/bin/sh
# Install headless Chromium, which the report tests and benchmarks/view.py render `mirrorl view`'s
# page with, unless it is already there. Without root and apt-get it only warns (exit 0), and those
# tests skip saying why. mirrorl itself never needs a browser.
command -v chromium-browser >/dev/null 2>&1 && exit 0
exec sh "$(dirname "$0")/apt-install.sh" chromium chromium "install-chromium.sh: could not install chromium; the tests that render the HTML report will skip"
