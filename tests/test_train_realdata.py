"""Real data (slow): insightface's MobileFaceNet gets a 14-px branch trained on CelebA on CPU.

The trunk comes without a classifier, so the run first fits one on the CelebA train split
(200 identities), then trains the branch for a few hundred steps. On the CelebA test pairs at
112&14 (second image resized 112→14 with OpenCV bilinear, no antialiasing; flip TTA; 10
folds) the branch must beat the same trunk fed the 14-px image up-sampled back to 112.

The run is short, so the distillation terms get a larger weight than the reference's λ = 0.5
(their gradients are ~1 % of the margin loss's at the start) and the rate is higher; the
loss, the frozen trunk and classifier and everything else are the BTNet recipe.
"""

from __future__ import annotations

import json
import time

import pytest
import timm
import torch
from safetensors.torch import load_file

from btnet_adapters import hub
from btnet_adapters.evaluate import read_pairs_tsv
from btnet_adapters.evaluate.runners import UpsamplingEmbedder, run_verification
from btnet_adapters.resize import CV2_BILINEAR
from btnet_adapters.train import BranchConfig, load_classifier, train_branch
from btnet_adapters.train.monitor import read_log

MFN = dict(embed_dim=128, backbone_kwargs=dict(num_features=128, scale=1))


@pytest.mark.slow
def test_branch_beats_upsampling_on_celeba(celeba_dir, mobilefacenet_weights, tmp_path):
    torch.set_num_threads(2)
    start = time.perf_counter()
    cfg = BranchConfig(
        data=str(celeba_dir / "splits" / "train.tsv"), data_root=str(celeba_dir / "images"), out=str(tmp_path / "b14"),
        model="btnet_mobilefacenet", model_kwargs=MFN, trunk_weights=str(mobilefacenet_weights), resolution=14,
        batch_size=32, epochs=2.0, lr=0.05, distill_weight=20.0, fit_epochs=3, channels_last=True, workers=0,
        log_every=25, progress=False, seed=0)
    result = train_branch(cfg)
    trained = time.perf_counter()
    assert result.step == result.total_steps == 254 and not result.interrupted
    assert load_classifier(result.files["classifier"]).num_classes == 200
    log = read_log(result.files["log"])
    assert log[-1]["loss_emb"] < log[0]["loss_emb"] and log[-1]["loss_feat"] < log[0]["loss_feat"]

    # The trunk as an imported insightface model, its 14-px branch rebuilt from it, then the adapter.
    model = timm.create_model("btnet_mobilefacenet", resolutions=[14], **MFN)
    model.trunk.load_state_dict(load_file(str(mobilefacenet_weights)), strict=True)
    model.remove_branch(14)
    model.add_branch(14)
    model.to(memory_format=torch.channels_last)
    pairs = read_pairs_tsv(celeba_dir / "protocols" / "verification_pairs.tsv", celeba_dir / "images")
    upsampled = run_verification(UpsamplingEmbedder.from_btnet(model, "upsampled"), pairs, ["112&14", "112&112"],
                                 resize=CV2_BILINEAR, flip=True, progress=False)
    hub.load_adapter(model, tmp_path / "b14", 14)
    btnet = run_verification(model, pairs, ["112&14"], resize=CV2_BILINEAR, flip=True, progress=False)
    numbers = {
        "btnet_112&14": btnet.results["112&14"].accuracy,
        "upsampled_112&14": upsampled.results["112&14"].accuracy,
        "trunk_112&112": upsampled.results["112&112"].accuracy,
        "steps": result.step, "train_s": round(trained - start, 1),
        "eval_s": round(time.perf_counter() - trained, 1),
        "last_log": {k: v for k, v in log[-1].items() if k.startswith("loss")},
    }
    print(json.dumps(numbers, indent=2))
    assert btnet.paths["112&14"] == (112, 14) and upsampled.paths["112&14"] == (112, 112)
    assert numbers["btnet_112&14"] > numbers["upsampled_112&14"]
