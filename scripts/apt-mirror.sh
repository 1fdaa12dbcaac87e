#!/usr/bin/env bash
# Prints the Debian archive URI this host's apt already uses (the one that serves the host's
# own release), so that nothing in the project names a mirror. CAIRN_MIRROR overrides it.
set -euo pipefail
if [ -n "${CAIRN_MIRROR:-}" ]; then echo "$CAIRN_MIRROR"; exit 0; fi
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
uri=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(TARGET_OF)' 2>/dev/null \
  | awk -v c="$codename" '$2 == c && $3 == "deb" { print $1; exit }')
if [ -z "$uri" ]; then
  uri=$(apt-get indextargets --format '$(REPO_URI) $(TARGET_OF)' 2>/dev/null \
    | awk '$2 == "deb" && $1 ~ /debian\/?$/ { print $1; exit }')
fi
if [ -z "$uri" ]; then
  echo "apt-mirror: no Debian archive found in apt's sources; run 'apt-get update' or set CAIRN_MIRROR=<archive URI>" >&2
  exit 1
fi
echo "${uri%/}"
