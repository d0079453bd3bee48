"""Build the random-weight SAM both sides load (runs in ``.venv-ref``, transformers 4.40).

``SamModel`` with SAM ViT-B's prompt encoder and mask decoder (hidden size 256, as every SAM) and a small vision
encoder (2 layers, width 96, one global-attention layer) so that one forward on the 1024×1024 input takes well
under a second on a CPU; the weights are random (seeded) since no checkpoint can be downloaded here, so only the
*equality* of the two code paths is tested, not SAM's quality.  ``SamProcessor`` is SAM ViT-B's (resize the
longest side to 1024, ImageNet normalisation, pad to 1024×1024).  Written in the older transformers so that the
newer one (``.venv``) loads it as it loads the hub's ``facebook/sam-vit-base`` (saved by old versions too).

``--full`` builds SAM ViT-B's real vision-encoder size (12 layers, width 768; about 90 M parameters, 360 MB).

Usage: ``python tests/reference/make_sam.py OUT_DIR [--full]``
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor, SamVisionConfig

SMALL_VISION = dict(hidden_size=96, num_hidden_layers=2, num_attention_heads=2, mlp_dim=384,
                    global_attn_indexes=[1], output_channels=256)


def main(out: Path, full: bool = False) -> None:
    folder = out / ("sam-vit-b" if full else "sam")
    if (folder / "config.json").exists():
        print(f"SAM already at {folder}")
        return
    vision = SamVisionConfig() if full else SamVisionConfig(**SMALL_VISION)
    config = SamConfig(vision_config=vision.to_dict())
    torch.manual_seed(1234)
    model = SamModel(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    SamProcessor(SamImageProcessor()).save_pretrained(folder)
    print(f"SAM written to {folder}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), full="--full" in sys.argv[2:])
