"""Consistency-training throughput: the packed step vs the per-record (reference) step, as a
ratio measured in one run (issue 16: "≥ 5x more consistency-loss block positions per second
than today's batch-1 path").

Both paths train the same model copy on the same trajectories folder with AdamW, one prompt /
one record per update, alternating in rounds (A B A B ...) so that a drift of the machine
hits both alike. Counted: consistency-loss block positions (positions from the first wrong
token of a state on, the terms both losses average over) and optimiser updates per second of
wall time, forward + backward + optimiser step included.

    python scripts/bench_cllm_training.py --model smollm2-135m --trajectories runs/cllm-spider/traj \
        --updates 8 --rounds 2 --out results/cllm-spider/training-throughput.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch


class PlainBackward:
    """The one accelerator method the step functions call."""

    @staticmethod
    def backward(loss: torch.Tensor) -> None:
        loss.backward()


def main() -> int:
    from cllm_bench.models import load_model
    from cllm_bench.trainers import cllm, common
    from cllm_bench.trainers.cllm_packed import PackedDataset, group_records, make_packed_step

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--trajectories", required=True)
    p.add_argument("--updates", type=int, default=8, help="updates per path per round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--states-per-block", type=int, default=4)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    records = common.read_trajectories(Path(args.trajectories))
    loaded = load_model(args.model, dtype="float32", device="cpu")
    model = loaded.model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    acc = PlainBackward()
    legacy_data = cllm.TrajectoryDataset(records, seed=0)
    collate = cllm.CllmCollator(common.pad_token_id(loaded.tokenizer, model))
    legacy_step = cllm.make_step(acc, model, ar_weight=10.0, label_smoothing=0.1, form="global", ar_tokens="all",
                                 use_gt_labels=False)
    packed_data = PackedDataset(group_records(records), args.states_per_block, seed=0)
    packed_step = make_packed_step(acc, model, ar_weight=10.0, label_smoothing=0.1)

    def legacy(i: int) -> int:
        batch = collate([legacy_data[i % len(legacy_data)]])
        legacy_step(batch)
        return int(cllm.first_wrong_mask(batch["states"], batch["fixed"], batch["valid"]).sum())

    def packed(i: int) -> int:
        return int(packed_step([packed_data[i % len(packed_data)]])["positions"])

    totals = {"per_record": [0.0, 0, 0], "packed": [0.0, 0, 0]}  # seconds, positions, updates
    for r in range(args.rounds):
        for name, fn in (("per_record", legacy), ("packed", packed)):
            for k in range(args.updates):
                start = time.perf_counter()
                positions = fn(r * args.updates + k)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                totals[name][0] += time.perf_counter() - start
                totals[name][1] += positions
                totals[name][2] += 1
    result = {
        name: {"seconds": round(s, 3), "consistency_positions": pos, "updates": n,
               "positions_per_s": round(pos / s, 3), "updates_per_s": round(n / s, 4)}
        for name, (s, pos, n) in totals.items()
    }
    result["ratio_positions_per_s"] = round(result["packed"]["positions_per_s"] / result["per_record"]["positions_per_s"], 2)
    result["provenance"] = {
        "command": " ".join(["python", "scripts/bench_cllm_training.py"] + [a for a in __import__("sys").argv[1:]]),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
        "processor": platform.processor(), "states_per_block": args.states_per_block, "records": len(records),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
