#!/usr/bin/env bash
# Contract hygiene: `buf breaking` on proto/ against the last released
# contract, the committed image proto/contract-baseline.binpb. A change that
# would break a generated client already in the field (a renamed or removed
# field, RPC or message, a changed type or number, ...) fails here. Breaking
# changes go into a new package version (milestones.goal.v2, ...) beside v1;
# after a release, refresh the baseline from the released commit's protos
# (docs/integrating.md, "Contract changes"):
#   (cd proto && buf build --exclude-source-info -o contract-baseline.binpb)
#
# Uses $BUF when set (e.g. the buf that .ci/run installed for `buf lint`),
# otherwise installs @bufbuild/buf@1 from npm into a temporary folder.
set -euo pipefail
cd "$(dirname "$0")/.."

baseline=proto/contract-baseline.binpb
[ -f "$baseline" ] || { echo "missing: $baseline (the released contract image)"; exit 1; }

if [ -z "${BUF:-}" ]; then
  command -v npm >/dev/null || { echo "missing: npm (needed to install @bufbuild/buf)"; exit 1; }
  bufdir=$(mktemp -d)
  trap 'rm -rf "$bufdir"' EXIT
  (cd "$bufdir" && npm install --silent --no-audit --no-fund @bufbuild/buf@1 >/dev/null)
  BUF="$bufdir/node_modules/.bin/buf"
fi
"$BUF" --version

# Rules: buf.yaml's `breaking` section (FILE: the strictest, wire and
# generated source compatibility per file).
(cd proto && "$BUF" breaking --against contract-baseline.binpb)
echo "buf breaking: no breaking change against $baseline"
