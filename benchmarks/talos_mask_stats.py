"""TaLoS's mask on the default image benchmark's backbone: the fraction of candidate entries
scoring exactly 0 at θ0 and the fraction really trained (entries tied at the threshold are all
kept), per task, for each score. Settings as configs/methods.toml: EfficientNet-Lite0 at 32 px,
prototype head (scale 30), 1000 training examples, fraction 0.1.

    PYTHONPATH=. python benchmarks/talos_mask_stats.py [--tasks mnist animal-mnist] [--score official]
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from taskvec.evaluate import encode
from taskvec.finetuning.build import FitData
from taskvec.kinds import TALOS
from taskvec.models import build_backbone
from taskvec.models.heads import prototype_head
from taskvec.tasks import load_task_data


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", nargs="+", default=["mnist", "animal-mnist"])
    parser.add_argument("--score", nargs="+", default=["official"])
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--examples", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(2)
    for task in args.tasks:
        model = build_backbone("effnet-lite0", image_size=32)
        data = load_task_data(task, seed=0, max_train=1000, max_val=200, max_test=500)
        inputs = model.prepare(data.train.inputs)
        labels = torch.as_tensor(data.train.labels)
        head = prototype_head(encode(model, inputs), labels, len(data.task.classnames), 30.0)
        fit = FitData(head, inputs, labels, batch_size=32, seed=0, device=torch.device("cpu"))
        for score in args.score:
            settings = TALOS.resolve({"fraction": args.fraction, "score": score, "examples": args.examples, "rounds": args.rounds})
            start = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                mask = TALOS.builds(model, settings, fit, False).stats()["mask"]
            seconds = time.perf_counter() - start
            touched = sum(f > 0 for f in mask["per_tensor"].values())
            print(
                f"{task:>13} {score:>12}: score 0 at θ0 {mask['zero_score']:.1%}, trained {mask['trained']:.2%} "
                f"(requested {mask['requested']:.0%}) of {mask['candidates']} candidates, tensors touched {touched}/"
                f"{len(mask['per_tensor'])}, {mask['examples']} examples × {mask['rounds']} rounds, {seconds:.0f} s"
                + (f"; warned: {caught[0].message}" if caught else ""),
                flush=True,
            )


if __name__ == "__main__":
    main()
