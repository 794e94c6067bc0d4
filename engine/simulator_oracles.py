"""Oracle annotators for the offline simulator: recorded votes, answer correctness, a synthetic reward.

An oracle answers a batch of pairs with outcomes (`a`, `b`, `tie`, `both_bad`) and gives, for held-
out evaluation, the probability that an annotator prefers a, which is 0.5 where it has no direction.
Only the simulator reads the oracle's fields (`correct`, the recorded votes, the latent reward);
acquisition never sees them.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from engine.errors import InputError
from engine.records import iter_rows
from engine.simulator_corpus import SimulationCorpus

logger = logging.getLogger(__name__)

OUTCOMES = ("a", "b", "tie", "both_bad")

# The bt-synthetic annotator's latent rewards are scaled so that reward differences over the
# candidate pairs have this standard deviation (in logits). At 3, a pair one standard deviation
# apart is voted the right way 95% of the time, and pairs near the boundary stay noisy.
DEFAULT_SHARPNESS = 3.0


class Oracle(Protocol):
    name: str

    def vote(self, pair_a: np.ndarray, pair_b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Return one outcome per pair, (n,) str, from OUTCOMES."""
        ...

    def preference(self, pair_a: np.ndarray, pair_b: np.ndarray) -> np.ndarray:
        """Return p(an annotator prefers a among decisive votes), (n,) float64, 0.5 for no direction."""
        ...


@dataclass
class SyntheticOracle:
    """A Bradley-Terry annotator whose latent reward is a fixed random linear function of the embeddings.

    reward = scale * (embeddings @ w) with w drawn from N(0, I) by `seed`, and p(a beats b) =
    sigmoid(reward_a - reward_b). It never returns tie or both_bad.
    """

    rewards: np.ndarray  # (R,) float64 latent reward of each response
    name: str = "bt-synthetic"

    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        pair_a: np.ndarray,
        pair_b: np.ndarray,
        *,
        seed: int = 0,
        sharpness: float = DEFAULT_SHARPNESS,
    ) -> SyntheticOracle:
        """Draw the reward direction and scale it on the given pairs (all candidate pairs, (N,) each)."""
        if not sharpness > 0:
            raise InputError(f"sharpness is {sharpness!r}, expected a value > 0.")
        direction = np.random.default_rng(seed).normal(size=embeddings.shape[1])
        raw = embeddings.astype(np.float64) @ direction
        spread = float(np.std(raw[pair_a] - raw[pair_b])) if pair_a.size else 1.0
        return cls(rewards=raw * (sharpness / max(spread, 1e-12)))

    def preference(self, pair_a: np.ndarray, pair_b: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(self.rewards[pair_a] - self.rewards[pair_b])))

    def vote(self, pair_a: np.ndarray, pair_b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        wins = rng.random(pair_a.shape[0]) < self.preference(pair_a, pair_b)
        return np.where(wins, "a", "b")


@dataclass
class CorrectnessOracle:
    """Correct beats incorrect, two correct responses tie, and two incorrect ones are both bad."""

    correct: np.ndarray  # (R,) bool
    name: str = "correctness"

    @classmethod
    def from_corpus(cls, corpus: SimulationCorpus, field: str = "correct") -> CorrectnessOracle:
        values = corpus.field_values(field)
        missing = [index for index, value in enumerate(values) if not isinstance(value, bool)]
        if missing:
            raise InputError(
                f"the correctness oracle needs a true/false {field!r} field on every response, but "
                f"{len(missing)} responses lack one (first: {corpus.response_ids[missing[0]]!r}): "
                "use another oracle or add the field."
            )
        return cls(correct=np.asarray(values, dtype=bool))

    def preference(self, pair_a: np.ndarray, pair_b: np.ndarray) -> np.ndarray:
        first, second = self.correct[pair_a], self.correct[pair_b]
        return np.where(first == second, 0.5, np.where(first, 1.0, 0.0))

    def vote(self, pair_a: np.ndarray, pair_b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        first, second = self.correct[pair_a], self.correct[pair_b]
        outcomes = np.where(first, "a", "b").astype(object)
        outcomes[first & second] = "tie"
        outcomes[~first & ~second] = "both_bad"
        return outcomes.astype(str)


@dataclass
class RecordedVotesOracle:
    """Vote on each request with one of the pair's recorded votes, drawn uniformly.

    Attributes:
        pair_a, pair_b: (N,) response positions of the voted pairs, in the file's a/b orientation.
        votes: the recorded outcomes of each pair, in the same orientation.
    """

    pair_a: np.ndarray
    pair_b: np.ndarray
    votes: list[list[str]]
    name: str = "votes"

    def __post_init__(self) -> None:
        self._lookup = {
            (int(a), int(b)): index for index, (a, b) in enumerate(zip(self.pair_a, self.pair_b))
        }

    @classmethod
    def from_file(cls, path: Path, corpus: SimulationCorpus) -> RecordedVotesOracle:
        """Read `response_a_id`, `response_b_id` and `votes` (or `winner`) rows; merge repeated pairs.

        Raises InputError when no row names two responses of the corpus.
        """
        position = {response_id: index for index, response_id in enumerate(corpus.response_ids)}
        merged: dict[tuple[int, int], list[str]] = defaultdict(list)
        skipped = 0
        for _, row in iter_rows(path):
            if not isinstance(row, dict):
                skipped += 1
                continue
            first = position.get(str(row.get("response_a_id")))
            second = position.get(str(row.get("response_b_id")))
            outcomes = _row_outcomes(row)
            if first is None or second is None or first == second or not outcomes:
                skipped += 1
                continue
            if corpus.response_prompt[first] != corpus.response_prompt[second]:
                skipped += 1
                continue
            if (second, first) in merged:
                merged[(second, first)].extend(_swap(outcome) for outcome in outcomes)
            else:
                merged[(first, second)].extend(outcomes)
        if skipped:
            logger.warning("%d vote rows skipped: unknown response ids, other prompts or no votes", skipped)
        if not merged:
            raise InputError(
                f"{path}: no vote row names two responses of the outputs file; check that its "
                "response_a_id / response_b_id match the outputs' response_id values."
            )
        keys = list(merged)
        return cls(
            pair_a=np.array([key[0] for key in keys], dtype=np.int64),
            pair_b=np.array([key[1] for key in keys], dtype=np.int64),
            votes=[merged[key] for key in keys],
        )

    def preference(self, pair_a: np.ndarray, pair_b: np.ndarray) -> np.ndarray:
        shares = np.empty(pair_a.shape[0])
        for row, (first, second) in enumerate(zip(pair_a.tolist(), pair_b.tolist())):
            outcomes, flipped = self._votes_of(first, second)
            wins_a = sum(outcome == "a" for outcome in outcomes)
            wins_b = sum(outcome == "b" for outcome in outcomes)
            share = 0.5 if wins_a + wins_b == 0 else wins_a / (wins_a + wins_b)
            shares[row] = 1.0 - share if flipped else share
        return shares

    def vote(self, pair_a: np.ndarray, pair_b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        outcomes = []
        for first, second in zip(pair_a.tolist(), pair_b.tolist()):
            recorded, flipped = self._votes_of(first, second)
            outcome = recorded[int(rng.integers(len(recorded)))]
            outcomes.append(_swap(outcome) if flipped else outcome)
        return np.asarray(outcomes, dtype=str)

    def _votes_of(self, first: int, second: int) -> tuple[list[str], bool]:
        if (first, second) in self._lookup:
            return self.votes[self._lookup[(first, second)]], False
        if (second, first) in self._lookup:
            return self.votes[self._lookup[(second, first)]], True
        raise InputError(f"no recorded votes for the pair of response positions {first} and {second}.")


def parse_oracle(spec: str) -> tuple[str, Path | None]:
    """Split an `--oracle` value into its kind and, for `votes:FILE`, the file."""
    if spec.startswith("votes:"):
        path = Path(spec.split(":", 1)[1])
        if not path.name:
            raise InputError("--oracle votes: needs a file, as in votes:pandalm_votes.jsonl.")
        return "votes", path
    if spec in ("correctness", "bt-synthetic"):
        return spec, None
    raise InputError(f"--oracle is {spec!r}, expected votes:FILE, correctness or bt-synthetic.")


def _row_outcomes(row: dict) -> list[str]:
    votes = row.get("votes")
    if isinstance(votes, list) and votes:
        return [_normalise_outcome(vote) for vote in votes if _normalise_outcome(vote)]
    winner = _normalise_outcome(row.get("winner"))
    return [winner] if winner else []


def _normalise_outcome(value: object) -> str:
    text = str(value).strip().lower() if value is not None else ""
    text = {"both bad": "both_bad", "both-bad": "both_bad"}.get(text, text)
    return text if text in OUTCOMES else ""


def _swap(outcome: str) -> str:
    return {"a": "b", "b": "a"}.get(outcome, outcome)
