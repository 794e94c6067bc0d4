"""Time one batch selection of 1,000 pairs from 100k and 1M candidate pairs with precomputed embeddings.

Embeddings are random unit vectors (384 dims, the all-MiniLM-L6-v2 size), 10 responses per prompt
(45 pairs each), so only acquisition is timed, never embedding. The preference model is fitted on
2,000 random votes first (not timed). Usage:

    .venv/bin/python bench/acquisition_selection_time.py [--pairs 100000 1000000] [--k 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from acquisition import CandidatePool, select_batch
from acquisition.modes import cluster_modes
from engine.preference import PreferenceModel

DIM = 384
PER_PROMPT = 10


def build_pool(n_pairs: int, rng: np.random.Generator, with_modes: bool) -> CandidatePool:
    pairs_per_prompt = PER_PROMPT * (PER_PROMPT - 1) // 2
    n_prompts = -(-n_pairs // pairs_per_prompt)
    response_prompt = np.repeat(np.arange(n_prompts), PER_PROMPT)
    embeddings = rng.standard_normal((response_prompt.size, DIM), dtype=np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    upper_i, upper_j = np.triu_indices(PER_PROMPT, k=1)
    offsets = (np.arange(n_prompts) * PER_PROMPT)[:, None]
    pair_a = (offsets + upper_i).reshape(-1)[:n_pairs]
    pair_b = (offsets + upper_j).reshape(-1)[:n_pairs]
    seen = np.zeros(response_prompt.size, dtype=bool)
    seen[rng.choice(response_prompt.size, size=min(5_000, response_prompt.size), replace=False)] = True
    modes = cluster_modes(embeddings, response_prompt) if with_modes else None
    return CandidatePool(embeddings, response_prompt, pair_a, pair_b, seen, modes=modes)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--k", type=int, default=1_000)
    parser.add_argument("--strategies", default="random,novelty,uncertainty,hybrid,stochastic")
    args = parser.parse_args()
    rng = np.random.default_rng(0)

    results = []
    for n_pairs in args.pairs:
        for with_modes in (False, True):
            started = time.perf_counter()
            pool = build_pool(n_pairs, rng, with_modes)
            build_seconds = time.perf_counter() - started
            voted = rng.choice(pool.n_pairs, size=2_000, replace=False)
            diffs = pool.embeddings[pool.pair_a[voted]] - pool.embeddings[pool.pair_b[voted]]
            model = PreferenceModel(seed=0).fit(diffs, (rng.random(voted.size) < 0.5).astype(float))
            for name in args.strategies.split(","):
                for fitted in (None, model):
                    started = time.perf_counter()
                    selection = select_batch(name, pool, args.k, np.random.default_rng(1), model=fitted)
                    seconds = time.perf_counter() - started
                    result = {
                        "pairs": pool.n_pairs, "responses": int(pool.embeddings.shape[0]), "modes": with_modes,
                        "strategy": name, "model": fitted is not None, "k": len(selection),
                        "seconds": round(seconds, 2), "pool_build_seconds": round(build_seconds, 1),
                    }
                    results.append(result)
                    print(json.dumps(result), flush=True)
    print(json.dumps({"cpus": len(os.sched_getaffinity(0)), "processor": platform.processor() or platform.machine()}))


if __name__ == "__main__":
    main()
