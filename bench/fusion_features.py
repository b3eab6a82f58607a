"""Does a calibrator feature set separate right from wrong fused answers? Train only.

On the cross-fitted train traces of a router directory's `default` plan (the plan the
evaluation chose on train), every stage's fused answer is a row; the calibrator is refitted
by 5-fold cross-validation over queries (the evaluation's folds) on the agreement features
alone and with the memory features, and each held-out row scored. Reported: AUROC and log
loss overall and per category. The test split is never read, so this can choose features
without touching it.

Usage:  .venv/bin/python bench/fusion_features.py --dataset routerbench --router-dir DIR
        (DIR: the --router-dir of an `emafusion eval` of this dataset)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from emafusion.cli.main import build_parser
from emafusion.cli.sources import load_records, pool_for, taxonomy_for
from emafusion.evals.baselines import complete
from emafusion.evals.experiment import FOLDS, TAXONOMY_THRESHOLD, Evaluation
from emafusion.nodes.policy import PolicySettings
from emafusion.stores.embeddings import default_embedder
from emafusion.stores.fusion import AGREEMENT_FEATURES, FEATURES, FusionModel
from emafusion.stores.metrics import auroc
from emafusion.train.combiner import fit_logistic
from emafusion.train.fusion import PlanTraces, calibration_rows_by_query


def rows(traces: PlanTraces) -> tuple[np.ndarray, np.ndarray, list[int], list[str]]:
    x, y, folds, categories = calibration_rows_by_query(traces, FOLDS)
    return x, y, folds.tolist(), categories


def cross_validated(x: np.ndarray, y: np.ndarray, folds: list[int]) -> np.ndarray:
    fold = np.asarray(folds)
    p = np.zeros(len(y))
    for f in range(FOLDS):
        held = fold == f
        coef, intercept = fit_logistic(x[~held], y[~held], 1.0)
        p[held] = 1.0 / (1.0 + np.exp(-(x[held] @ coef + intercept)))
    return p


def log_loss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, 1e-9, 1 - 1e-9)
    return float(-np.mean(np.where(y, np.log(p), np.log(1 - p))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--router-dir", type=Path, required=True)
    args = parser.parse_args()
    source = build_parser().parse_args(["eval", "--dataset", args.dataset])
    records = load_records(source)
    pool = pool_for(source, records)
    assert pool is not None
    presets = json.loads((args.router_dir / "presets.json").read_text())
    plan = presets["presets"]["default"]["settings"]["stages"]
    evaluation = Evaluation(records, pool, default_embedder(), taxonomy_for(source, records))
    resources = evaluation.fit()
    train = complete(records.split("train"), pool)
    s_train, _ = evaluation.signals(train, [])
    settings = PolicySettings(threshold=0.5, max_levels=8, fusion="vote")
    traces = PlanTraces.build(plan, s_train, resources, TAXONOMY_THRESHOLD, settings, FusionModel())
    x, y, folds, categories = rows(traces)
    sets = {
        "agreement": [FEATURES.index(f) for f in AGREEMENT_FEATURES],
        "agreement + memory": list(range(len(FEATURES))),
        "agreement + memory_p": [FEATURES.index(f) for f in (*AGREEMENT_FEATURES, "memory_p")],
    }
    scored = {name: cross_validated(x[:, cols], y, folds) for name, cols in sets.items()}
    print(f"{args.dataset}: default plan {plan}; {len(y):,} train rows, right {y.mean():.3f}")
    print("| features | scope | rows | AUROC | log loss |")
    print("|---|---|---:|---:|---:|")
    cats = np.asarray(categories)
    for scope in ["all", *sorted(set(categories))]:
        keep = np.ones(len(y), bool) if scope == "all" else cats == scope
        for name, p in scored.items():
            print(
                f"| {name} | {scope} | {int(keep.sum()):,} | {auroc(p[keep], y[keep]):.4f} "
                f"| {log_loss(p[keep], y[keep]):.4f} |"
            )


if __name__ == "__main__":
    main()
