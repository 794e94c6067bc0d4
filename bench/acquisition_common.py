"""Corpora, embedding settings and cache paths shared by the acquisition benchmarks.

Each corpus is embedded once with all-MiniLM-L6-v2 into bench/.cache/ (git-ignored), and every
benchmark run reads the cache.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The public data sets: $PREFSCOUT_SHARED_DATA, else ../shared/data next to the repository.
DATA = Path(os.environ.get("PREFSCOUT_SHARED_DATA", REPO.parent / "shared" / "data"))
CACHE = REPO / "bench" / ".cache"


@dataclass(frozen=True)
class BenchCorpus:
    name: str
    outputs: Path
    truncate: bool  # embed only the first 256-token window
    tail_chars: int | None  # embed only the last characters (the final answer of a MATH response)

    @property
    def cache(self) -> Path:
        mode = "truncate" if self.truncate else "windows"
        if self.tail_chars is not None:
            mode = f"tail{self.tail_chars}"
        return CACHE / f"{self.name}-{mode}.npz"


CORPORA = {
    "pandalm": BenchCorpus("pandalm", DATA / "pandalm_outputs.jsonl", truncate=False, tail_chars=None),
    "mtbench": BenchCorpus("mtbench", DATA / "mtbench_outputs.jsonl", truncate=True, tail_chars=None),
    "math": BenchCorpus("math", DATA / "math_l5_dev_outputs.jsonl.gz", truncate=False, tail_chars=400),
}
PANDALM_VOTES = DATA / "pandalm_votes.jsonl"
