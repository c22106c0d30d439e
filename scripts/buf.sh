#!/usr/bin/env bash
# buf checks for protos/ (run by `make lint`), offline and without remote dependencies:
#
#   1. buf lint      STANDARD + COMMENTS, with the exceptions documented in buf.yaml
#   2. buf format    -d --exit-code: fails on any formatting difference (fix: `buf format -w`)
#   3. buf breaking  FILE rules, against the protos of the main branch
#
# The protos import google/api/*.proto (and may import google/rpc/*.proto). Those come from the
# googleapis-common-protos package installed in the venv: this script copies them into a
# temporary workspace next to a symlink to protos/, never into the repository, and deletes the
# workspace on exit.
#
# The breaking check extracts protos/ from the main branch with `git archive` into a second
# temporary workspace (a plain `--against '.git#branch=main'` cannot resolve google/api imports,
# because they are deliberately not in git). It is skipped, with a message, outside a git
# checkout, when no `main` (or `origin/main`) exists, or when main has no protos yet.
#
# Environment:
#   BUF          buf binary (default: .venv/bin/buf, else buf on PATH; `pip install buf-bin`)
#   BUF_PYTHON   Python with googleapis-common-protos and PyYAML (default: .venv/bin/python)
#   BUF_AGAINST  branch or commit to compare with (default: main, falling back to origin/main)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

find_tool() {  # $1: explicit value, $2: venv path, $3: name on PATH
  if [[ -n $1 ]]; then
    echo "$1"
  elif [[ -x $2 ]]; then
    echo "$root/$2"
  else
    command -v "$3" || true
  fi
}
buf=$(find_tool "${BUF:-}" .venv/bin/buf buf)
python=$(find_tool "${BUF_PYTHON:-}" .venv/bin/python python3)
if [[ -z $buf ]]; then
  echo "buf.sh: buf not found; install the dev extras (buf-bin) or set BUF" >&2
  exit 2
fi

site=$("$python" -c 'import os, google.api; print(os.path.dirname(os.path.dirname(google.api.__path__[0])))') || {
  echo "buf.sh: $python cannot import google.api (googleapis-common-protos); set BUF_PYTHON" >&2
  exit 2
}

work=$(mktemp -d "${TMPDIR:-/tmp}/credbroker-buf.XXXXXX")
trap 'rm -rf "$work"' EXIT

# A workspace in $1: buf.yaml (this repository's, plus a `googleapis` module that is neither
# linted nor checked for breaking changes) and a copy of google/api and google/rpc.
make_workspace() {
  local dir=$1
  mkdir -p "$dir/googleapis"
  (cd "$site" && find google/api google/rpc -name '*.proto' -exec cp --parents {} "$dir/googleapis/" \;)
  "$python" - "$root/buf.yaml" "$dir/buf.yaml" <<'EOF'
import sys

import yaml

with open(sys.argv[1], encoding="utf-8") as source:
    config = yaml.safe_load(source)
config["modules"].append(
    {
        "path": "googleapis",
        "lint": {"ignore": ["googleapis/google"]},
        "breaking": {"ignore": ["googleapis/google"]},
    }
)
with open(sys.argv[2], "w", encoding="utf-8") as target:
    yaml.safe_dump(config, target, sort_keys=False)
EOF
}

make_workspace "$work/current"
ln -s "$root/protos" "$work/current/protos"

failed=()

echo "buf lint"
# Run inside the workspace so reported paths read protos/credbroker/v1/..., as in the repository.
(cd "$work/current" && "$buf" lint) || failed+=(lint)

echo "buf format"
"$buf" format -d --exit-code protos || failed+=("format (run: $buf format -w)")

echo "buf breaking"
against=${BUF_AGAINST:-main}
ref=""
if git -C "$root" rev-parse --git-dir >/dev/null 2>&1; then
  for candidate in "$against" "origin/$against"; do
    if git -C "$root" rev-parse --verify --quiet "$candidate^{commit}" >/dev/null; then
      ref=$candidate
      break
    fi
  done
fi
if [[ -z $ref ]]; then
  echo "  skipped: no git history with '$against' to compare with"
elif ! git -C "$root" ls-tree -r --name-only "$ref" -- protos | grep -q '\.proto$'; then
  echo "  skipped: '$ref' has no protos yet"
else
  make_workspace "$work/against"
  git -C "$root" archive "$ref" protos | tar -x -C "$work/against"
  echo "  against $ref ($(git -C "$root" rev-parse --short "$ref^{commit}"))"
  (cd "$work/current" && "$buf" breaking . --against "$work/against") || failed+=(breaking)
fi

if ((${#failed[@]})); then
  printf 'buf.sh: failed: %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "buf: lint, format and breaking checks passed"
