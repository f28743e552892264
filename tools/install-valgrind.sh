#!/usr/bin/env bash
# valgrind, a system package: `llmperf.instructions` counts instructions per token under its callgrind (README,
# "Two commands"; docs/noise.md, "Instructions per token"). Without it those metrics are unavailable with the
# reason, and strict mode fails the tests that gate them. Installs Debian/Ubuntu's package when valgrind is
# missing (as root, or through sudo); elsewhere it says what to install and fails.
set -euo pipefail
if command -v valgrind >/dev/null 2>&1; then
    valgrind --version
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "valgrind is not installed and this is not a Debian/Ubuntu system: install valgrind (>= 3.19) with the" \
         "system's package manager" >&2
    exit 1
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
    sudo="sudo"
fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq valgrind >/dev/null
valgrind --version
