#!/usr/bin/env bash
# The README's first command: builds vlm and runs the embedded demo model (models/smolvlm-shapes, a tiny
# SmolVLM-architecture model trained by Tools/demo-model) on a shipped example image.
#   bash Tools/demo.sh [IMAGE] [QUESTION]
set -euo pipefail
cd "$(dirname "$0")/.."
image="${1:-models/smolvlm-shapes/examples/one-shape.png}"
question="${2:-Describe this image.}"
# Same flags as the test build (.ci/run), so the two commands share one build.
swift build -c release -Xswiftc -enable-testing --product vlm >&2
.build/release/vlm run --image "$image" --prompt "<image>$question" --max-new-tokens 48 --stats
