#!/usr/bin/env bash
# Install Debian's headless-capable chromium for the report HTML render test
# (tests/report/test_report.py skips that test when /usr/bin/chromium is missing).
#
# usage: sudo .ci/chromium.sh        (Debian/Ubuntu CI image; takes a few minutes)
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    /usr/bin/chromium --version
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# fonts-dejavu-core: without any font the page renders as boxes and the pixel check is weaker.
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
/usr/bin/chromium --version
