"""``python -m ceod.cli.sample_photos``: the command line of :mod:`ceod.models.sample_photos`."""

from __future__ import annotations

import argparse
import sys

import torch

from ceod.models.sample_photos import __doc__ as DOC, batch, hits, load_photos, top5


def main() -> None:
    from timm.data import ImageNetInfo

    from ceod.models.timm_backbone import TimmClassifier

    p = argparse.ArgumentParser(description=DOC.split("\n")[0])
    p.add_argument("--model", default="tf_efficientnet_lite0")
    p.add_argument("--weights", default=None)
    a = p.parse_args()
    torch.set_num_threads(1)
    model = TimmClassifier(a.model, num_classes=1000, in_chans=3, pretrained=True, weights=a.weights).eval()
    photos = load_photos()
    idx, prob = top5(model, batch(photos))
    info = ImageNetInfo()
    checked = hits(idx, list(photos))
    for k, name in enumerate(photos):
        mark = "-   " if name not in checked else "ok  " if checked[name] else "MISS"
        top = ", ".join(f"{info.index_to_description(int(i)).split(',')[0]} {float(q):.2f}"
                        for i, q in zip(idx[k], prob[k]))
        print(f"{name:13s} {mark} {top}")


if __name__ == "__main__":
    sys.exit(main())
