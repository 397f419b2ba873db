#!/usr/bin/env bash
# Installs what building and testing need on Debian 12 (scripts/deps.sh), then
# builds into ./dist. Sourced by demo.sh; safe to run again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/deps.sh
scripts/build.sh dist >&2
