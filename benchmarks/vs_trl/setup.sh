#!/usr/bin/env bash
# Creates benchmarks/vs_trl/.venv-trl (if missing) with pinned TRL and its stack, apart from rlpt's .venv: TRL and
# rlpt need different packages, and one venv for both would benchmark neither as its users install it.
# Idempotent: a stamp records the hash of this script (which holds the pins), so a second call returns at once.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3.11}
VENV=.venv-trl
# torch==2.13.0 resolves to the local +cpu wheel on this machine kind (see shared/notes/cpu-stack.md); the rest
# are the releases TRL 1.16.0 was measured with there.
PINS=(trl==1.16.0 transformers==5.19.0 accelerate==1.15.0 datasets==5.2.0)
stamp_want=$(sha256sum setup.sh | cut -c1-16)
stamp_file=$VENV/.trl-installed

say() { printf '[setup-trl] %s\n' "$*"; }
die() { printf '[setup-trl] ERROR: %s\n' "$*" >&2; exit 1; }

if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp_want" ]; then
  say "TRL environment up to date ($PWD/$VENV)"
  exit 0
fi
command -v "$PY" >/dev/null || die "$PY not found; set PYTHON=/path/to/python3.11"
start=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV" || die "could not create $VENV (is the python3.11-venv package installed?)"
fi
say "installing torch==2.13.0 (CPU), then ${PINS[*]}"
"$VENV/bin/python" -m pip install --quiet --upgrade pip || die "could not upgrade pip in $VENV"
# torch first and alone: so that TRL's dependencies resolve against the CPU build instead of pulling a CUDA one.
"$VENV/bin/python" -m pip install --quiet torch==2.13.0 || die "pip install torch==2.13.0 failed"
"$VENV/bin/python" -m pip install --quiet "${PINS[@]}" || die "pip install ${PINS[*]} failed"
"$VENV/bin/python" -c "import torch, trl, transformers; print('[setup-trl] imports ok: torch', torch.__version__,
      'trl', trl.__version__, 'transformers', transformers.__version__)" || die "the TRL stack does not import"
echo "$stamp_want" > "$stamp_file"
say "done in $(( $(date +%s) - start ))s"
