#!/usr/bin/env bash
# Rebuilds releases/btnet-mobilefacenet-ms1m/ from scratch (about 50 min on 2 CPU cores): the README's
# real-scale reproduction (insightface MobileFaceNet, CelebA train split, branches 7/14/28 with the default
# recipe, φ_mr/φ_mm fine-tunes for the comparison table, CelebA test pairs), then the release folder.
# Usage: bash releases/build-btnet-mobilefacenet-ms1m.sh [DATA_DIR] [RUN_DIR]
set -euo pipefail
D=${1:-../shared/data}
RUN=${2:-runs/celeba_mfn}
HERE=$(cd "$(dirname "$0")" && pwd)
btnet reproduce --out "$RUN" --trunk "$D/weights/mobilefacenet_insightface_ms1m.safetensors" \
    --train "$D/celeba112/splits/train.tsv" --train-root "$D/celeba112/images" \
    --pairs "$D/celeba112/protocols/verification_pairs.tsv" --images "$D/celeba112/images" \
    --openset "$D/celeba112/protocols" --resolutions 7,14,28 --phi-mr --phi-mm
python -m btnet_adapters.reproduce.release --run "$RUN" --card "$HERE/btnet-mobilefacenet-ms1m.card.json" \
    --out "$HERE/btnet-mobilefacenet-ms1m" --overwrite
