"""One acquisition round: build the candidate pool, refit the preference model, select and record a batch.

A candidate pair is two different responses to one prompt that no earlier round selected. The
strategy comes from the acquisition registry by name; this module never special-cases one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from acquisition import CandidatePool, default_novelty_weight, get_strategy, select_batch, strategy_options
from acquisition.policy import (
    cap_max_length,
    check_policy_name,
    fill_tokenless_with_warning,
    has_tokens,
    load_policy_config,
    load_policy_model,
    load_policy_tokenizer,
    mean_token_logprob,
    policy_cache_key,
    strategy_uses_policy,
)
from engine.errors import ConfigError, InputError
from engine.preference import PreferenceModel
from engine.records import RowProblem, iter_rows
from engine.response_features import check_mode_field, generator_features, response_modes
from engine.store import PairRow, ResponseRow, Store, make_pair_id, text_hash, utc_now
from engine.vectors import EmbeddingSpace, load_vectors
from engine.workspace import RoundSettings, Workspace

logger = logging.getLogger(__name__)

MIN_VOTES_TO_FIT = 2  # decisive votes (a or b) needed before the preference model is trained

MODE_FIELD_OPTION = "--mode-field (round.mode_field in config.json)"  # named in mode field errors

# Responses scored by the policy model between two writes to the cache, so an interrupted round
# keeps what it computed.
POLICY_SAVE_CHUNK = 256


@dataclass
class RoundReport:
    round_id: int | None  # None when the pool was empty and no round was recorded
    strategy: str
    seed: int
    pool_size: int
    selected: int
    decisive_votes: int
    model_trained: bool
    candidate_problems: list[RowProblem] = field(default_factory=list)
    policy_computed: int = 0  # policy log-probabilities computed in this round
    policy_cached: int = 0  # policy log-probabilities read from the store's cache
    policy_model: str | None = None  # cache key of the policy model that scored this round, None when unused


@dataclass(frozen=True)
class PolicyScores:
    """Mean token log-probabilities of a corpus's responses under the policy model."""

    logprob: np.ndarray  # (R,) float64 in corpus order; 0.0 for responses that were not scored
    computed: int
    cached: int
    model_key: str  # policy_cache_key of the model
    max_length: int  # tokens of prompt and response scored together, capped at the model's limit


@dataclass(frozen=True)
class Corpus:
    """Embedded responses of a workspace, in row order, with positions used by the acquisition arrays."""

    rows: np.ndarray  # (R,) int64 response rows
    prompt_rows: np.ndarray  # (R,) int64 prompt row of each response
    hashes: list[str]  # text hash of each response
    embeddings: np.ndarray  # (R, D) float32
    features: np.ndarray | None = None  # (R, F) float32 preference-model features, or None for the embeddings

    @property
    def preference_features(self) -> np.ndarray:
        """Features the preference model trains and scores on, (R, F)."""
        return self.embeddings if self.features is None else self.features

    def positions(self) -> dict[int, int]:
        """Map response row -> position in the arrays."""
        return {int(row): position for position, row in enumerate(self.rows)}


def load_corpus(workspace: Workspace, store: Store, *, generator_feature: bool = False) -> Corpus:
    """Load the embedded responses. With `generator_feature`, the features join a one-hot of each response's model."""
    space = EmbeddingSpace.for_workspace(workspace, store)
    rows, prompt_rows, hashes = store.response_table()
    vector_rows, vectors = load_vectors(workspace, store, space, "responses")
    if not np.array_equal(rows, vector_rows):
        embedded = set(vector_rows.tolist())
        keep = np.array([row in embedded for row in rows.tolist()], dtype=bool)
        logger.warning("%d responses have no embedding and are left out of the pool", int((~keep).sum()))
        rows, prompt_rows = rows[keep], prompt_rows[keep]
        hashes = [digest for digest, kept in zip(hashes, keep) if kept]
    corpus = Corpus(rows=rows, prompt_rows=prompt_rows, hashes=hashes, embeddings=vectors)
    if not generator_feature:
        return corpus
    models = [response.model for response in _responses_in_order(store, corpus)]
    return dataclasses.replace(corpus, features=generator_features(vectors, models))


def corpus_modes(store: Store, corpus: Corpus, settings: RoundSettings) -> np.ndarray:
    """Label each response's mode, (R,) int64, as the simulator does: `settings.mode_field`, else clusters."""
    metadata: list[dict] = []
    if settings.mode_field is not None:
        check_mode_field(settings.mode_field, MODE_FIELD_OPTION)  # before reading every response
        metadata = [response.metadata for response in _responses_in_order(store, corpus)]
    return response_modes(
        corpus.embeddings,
        corpus.prompt_rows,
        metadata,
        mode_field=settings.mode_field,
        threshold=settings.mode_threshold,
        option=MODE_FIELD_OPTION,
    )


def _responses_in_order(store: Store, corpus: Corpus) -> list[ResponseRow]:
    by_row = {response.row: response for response in store.responses(corpus.rows.tolist())}
    return [by_row[int(row)] for row in corpus.rows]


def all_pairs(corpus: Corpus) -> tuple[np.ndarray, np.ndarray]:
    """Return positions (a, b) of every pair of two different responses to one prompt, a < b."""
    order = np.argsort(corpus.prompt_rows, kind="stable")
    boundaries = np.flatnonzero(np.diff(corpus.prompt_rows[order])) + 1
    firsts, seconds = [], []
    for group in np.split(order, boundaries):
        if len(group) < 2:
            continue
        upper_i, upper_j = np.triu_indices(len(group), k=1)
        firsts.append(group[upper_i])
        seconds.append(group[upper_j])
    if not firsts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    return np.concatenate(firsts).astype(np.int64), np.concatenate(seconds).astype(np.int64)


def read_candidate_pairs(
    path: Path, store: Store, corpus: Corpus
) -> tuple[np.ndarray, np.ndarray, list[RowProblem]]:
    """Read `response_a_id`/`response_b_id` pairs from a votes-style file, as corpus positions."""
    resolve = store.resolve_response_ids()
    positions = corpus.positions()
    firsts, seconds, problems = [], [], []
    seen: set[tuple[int, int]] = set()
    for location, row in iter_rows(path):
        if isinstance(row, RowProblem):
            problems.append(row)
            continue
        ids = (row.get("response_a_id"), row.get("response_b_id"))
        if not all(isinstance(value, (str, int)) and not isinstance(value, bool) for value in ids):
            problems.append(RowProblem(location, "missing response_a_id or response_b_id"))
            continue
        unknown = [str(value) for value in ids if str(value) not in resolve]
        if unknown:
            problems.append(RowProblem(location, f"response id {unknown[0]!r} is not in the workspace: it was never ingested, or ingest rejected its row (see the ingest report)"))
            continue
        first, second = (positions.get(resolve[str(value)]) for value in ids)
        if first is None or second is None:
            problems.append(RowProblem(location, "a response of this pair has no embedding"))
            continue
        if first == second:
            continue  # both ids name the same stored text (a byte-identical duplicate)
        if corpus.prompt_rows[first] != corpus.prompt_rows[second]:
            problems.append(RowProblem(location, "the two responses answer different prompts"))
            continue
        key = (min(first, second), max(first, second))
        if key not in seen:
            seen.add(key)
            firsts.append(key[0])
            seconds.append(key[1])
    return np.array(firsts, dtype=np.int64), np.array(seconds, dtype=np.int64), problems


def training_votes(store: Store, corpus: Corpus) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (diffs (V, F), labels (V,), prompt rows (V,)) of the decisive votes, on `corpus.preference_features`.

    Ties, both-bad and skips carry no direction between the two responses, so the Bradley-Terry
    model leaves them out.
    """
    positions = corpus.positions()
    firsts, seconds, labels, groups = [], [], [], []
    for vote in store.votes():
        if vote["outcome"] not in ("a", "b"):
            continue
        first, second = positions.get(vote["response_a"]), positions.get(vote["response_b"])
        if first is None or second is None:
            continue
        firsts.append(first)
        seconds.append(second)
        labels.append(1.0 if vote["outcome"] == "a" else 0.0)
        groups.append(vote["prompt_row"])
    features = corpus.preference_features
    dimension = features.shape[1] if features.ndim == 2 else 0
    if not firsts:
        return np.zeros((0, dimension), dtype=np.float32), np.zeros(0), np.zeros(0, dtype=np.int64)
    diffs = features[firsts] - features[seconds]
    return diffs, np.array(labels), np.array(groups, dtype=np.int64)


def fit_preference_model(store: Store, corpus: Corpus, seed: int) -> tuple[PreferenceModel | None, int]:
    diffs, labels, _ = training_votes(store, corpus)
    if len(labels) < MIN_VOTES_TO_FIT:
        return None, len(labels)
    model = PreferenceModel(seed=seed).fit(diffs, labels)
    return model, len(labels)


def run_round(
    workspace: Workspace,
    store: Store,
    *,
    budget: int,
    strategy: str | None = None,
    seed: int | None = None,
    candidates: Path | None = None,
    settings: RoundSettings | None = None,
) -> RoundReport:
    """Select up to `budget` new pairs and record them with their scores, sides and the round.

    `settings` defaults to the workspace config's round section, and `strategy` overrides its strategy.
    """
    if budget < 1:
        raise InputError(f"--budget must be at least 1, got {budget}")
    settings = settings or workspace.load_config().round
    strategy = strategy or settings.strategy
    get_strategy(strategy)  # an unknown name fails here, listing the known ones, before any work
    check_mode_field(settings.mode_field, MODE_FIELD_OPTION)
    check_novelty_weight(settings.novelty_weight)
    if settings.policy_model is not None:
        check_policy_settings(settings)
    seed = secrets.randbelow(2**31) if seed is None else seed
    rng = np.random.default_rng(seed)

    corpus = load_corpus(workspace, store, generator_feature=settings.generator_feature)
    modes = corpus_modes(store, corpus, settings)
    problems: list[RowProblem] = []
    if candidates is None:
        firsts, seconds = all_pairs(corpus)
    else:
        firsts, seconds, problems = read_candidate_pairs(candidates, store, corpus)
    earlier_pairs = list(store.pairs().values())
    firsts, seconds = _drop_unusable(earlier_pairs, corpus, firsts, seconds)

    model, decisive_votes = fit_preference_model(store, corpus, seed)
    if len(firsts) == 0:
        logger.info("no candidate pairs left; no round recorded")
        return RoundReport(
            round_id=None,
            strategy=strategy,
            seed=seed,
            pool_size=0,
            selected=0,
            decisive_votes=decisive_votes,
            model_trained=model is not None,
            candidate_problems=problems,
        )
    policy = None
    if settings.policy_model is not None and not strategy_uses_policy(strategy):
        logger.info("strategy %s does not score novelty, so the policy model %s is not used", strategy, settings.policy_model)
    elif settings.policy_model is not None:
        # Novelty ranks a response's log-probability among all responses to its prompt, so every
        # response of a prompt with a candidate pair is scored, and no other.
        policy = policy_logprobs(store, corpus, settings, np.unique(corpus.prompt_rows[firsts]))
    seen = np.zeros(len(corpus.rows), dtype=bool)
    positions = corpus.positions()
    for pair in earlier_pairs:
        for row in (pair.response_a, pair.response_b):
            if row in positions:
                seen[positions[row]] = True

    pool = CandidatePool(
        embeddings=corpus.embeddings,
        response_prompt=corpus.prompt_rows,
        pair_a=firsts,
        pair_b=seconds,
        seen=seen,
        modes=modes,
        features=corpus.features,
        policy_logprob=None if policy is None else policy.logprob,
    )
    # Settings apply to the strategies that take them; `random` stays uniform over the pool.
    settings_options = {
        "max_per_prompt": settings.max_pairs_per_prompt,
        "novelty_weight": (
            default_novelty_weight(settings.mode_field is not None)
            if settings.novelty_weight is None
            else settings.novelty_weight
        ),
        "optimism": settings.optimism,
    }
    accepted = strategy_options(strategy)
    options = {
        key: value for key, value in settings_options.items() if accepted is None or key in accepted
    }
    selection = select_batch(strategy, pool, budget, rng, model=model, **options)
    recorded_options = {**options, **settings_used(settings, options, policy)}
    round_id = _record(store, corpus, strategy, budget, seed, pool, selection, decisive_votes, recorded_options, rng)
    logger.info(
        "round %d: %s selected %d of %d candidate pairs (seed %d, %d decisive votes)",
        round_id, strategy, len(selection.indices), len(firsts), seed, decisive_votes,
    )
    return RoundReport(
        round_id=round_id,
        strategy=strategy,
        seed=seed,
        pool_size=len(firsts),
        selected=len(selection.indices),
        decisive_votes=decisive_votes,
        model_trained=model is not None,
        candidate_problems=problems,
        policy_computed=0 if policy is None else policy.computed,
        policy_cached=0 if policy is None else policy.cached,
        policy_model=None if policy is None else policy.model_key,
    )


def settings_used(
    settings: RoundSettings, options: dict[str, object], policy: PolicyScores | None = None
) -> dict[str, object]:
    """Return the round settings to record with a round; a setting the round did not use is None.

    `novelty_weight` and `optimism` count as used when the strategy took them as options,
    `mode_threshold` only without a mode field, and the policy model and its max length only when
    `policy` scored the pool. The recorded max length is the one the cache is keyed by.
    """
    return {
        "mode_field": settings.mode_field,
        "mode_threshold": settings.mode_threshold if settings.mode_field is None else None,
        "generator_feature": settings.generator_feature,
        "novelty_weight": options.get("novelty_weight"),
        "optimism": options.get("optimism"),
        "policy_model": None if policy is None else policy.model_key,
        "policy_max_length": None if policy is None else policy.max_length,
    }


def check_novelty_weight(value: object) -> None:
    """Reject a novelty weight outside [0, 1], whatever the strategy, so a typo never passes silently."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ConfigError(
            f"--novelty-weight (round.novelty_weight in config.json) is {value!r}, expected a number "
            "in [0, 1] (for hybrid, the share of each batch chosen by novelty), or null for the default."
        )


def check_policy_settings(settings: RoundSettings) -> None:
    """Reject an empty policy model name and a batch size or length the policy cannot run with."""
    if not isinstance(settings.policy_model, str) or not settings.policy_model.strip():
        raise ConfigError(
            f"--policy-model (round.policy_model in config.json) is {settings.policy_model!r}: expected "
            "a Hugging Face Hub id or a local folder of a causal language model, or null for none."
        )
    check_policy_name(settings.policy_model)
    for option, value, minimum in (
        ("policy-batch-size", settings.policy_batch_size, 1),
        ("policy-max-length", settings.policy_max_length, 2),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(
                f"--{option} (round.{option.replace('-', '_')} in config.json) is {value!r}, "
                f"expected an integer >= {minimum}."
            )


def policy_logprobs(store: Store, corpus: Corpus, settings: RoundSettings, prompt_rows: np.ndarray) -> PolicyScores:
    """Score the responses to `prompt_rows` under `settings.policy_model`, reading and filling the store's cache.

    The tokenizer and config are loaded first, because the cache is keyed by the max length after
    capping it at the model's limit. The model itself is loaded only when some response is not
    cached yet; one that cannot be loaded raises ConfigError before anything is written. A response
    without tokens is never cached and gets the lowest log-probability of its prompt (see
    `fill_tokenless_with_warning`), with a warning naming its id.
    """
    model_key = policy_cache_key(settings.policy_model)
    tokenizer = load_policy_tokenizer(settings.policy_model)
    max_length = cap_max_length(settings.policy_max_length, load_policy_config(settings.policy_model), tokenizer)
    scored = np.flatnonzero(np.isin(corpus.prompt_rows, prompt_rows))
    prompts = {row: text for row, (_, text) in store.prompt_texts().items()}
    prompt_hashes = {int(row): text_hash(prompts[int(row)]) for row in prompt_rows}
    keys = {
        int(position): (prompt_hashes[int(corpus.prompt_rows[position])], corpus.hashes[position])
        for position in scored
    }
    cached = store.cached_policy_logprobs(model_key, max_length, keys.values())
    missing = [position for position, key in keys.items() if key not in cached]
    responses = {response.row: response for response in store.responses(corpus.rows[missing].tolist())}
    tokenless = [position for position in missing if not has_tokens(tokenizer, responses[int(corpus.rows[position])].text)]
    to_compute = sorted(set(missing) - set(tokenless))
    logger.info(
        "policy log-probabilities under %s (max length %d): %d of %d responses cached, %d to compute",
        model_key, max_length, len(keys) - len(missing), len(keys), len(to_compute),
    )

    if to_compute:
        policy = load_policy_model(settings.policy_model)
        for start in range(0, len(to_compute), POLICY_SAVE_CHUNK):
            chunk = to_compute[start : start + POLICY_SAVE_CHUNK]
            values = mean_token_logprob(
                policy,
                tokenizer,
                [prompts[int(corpus.prompt_rows[position])] for position in chunk],
                [responses[int(corpus.rows[position])].text for position in chunk],
                batch_size=settings.policy_batch_size,
                max_length=max_length,
            )
            computed = {keys[position]: float(value) for position, value in zip(chunk, values)}
            store.save_policy_logprobs(model_key, max_length, computed)
            cached.update(computed)

    logprob = np.zeros(len(corpus.rows))
    for position, key in keys.items():
        logprob[position] = cached.get(key, np.nan)
    # Only the responses without tokens (NaN) are named in the warning, and they are all in `responses`.
    response_ids = [""] * len(corpus.rows)
    for position in tokenless:
        response_ids[position] = responses[int(corpus.rows[position])].response_id
    logprob = fill_tokenless_with_warning(logprob, corpus.prompt_rows, response_ids, model_key)
    return PolicyScores(
        logprob=logprob,
        computed=len(to_compute),
        cached=len(keys) - len(missing),
        model_key=model_key,
        max_length=max_length,
    )


def _drop_unusable(
    earlier_pairs: list[PairRow], corpus: Corpus, firsts: np.ndarray, seconds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Remove pairs selected in an earlier round and pairs of two identical texts."""
    selected = {
        (min(pair.response_a, pair.response_b), max(pair.response_a, pair.response_b))
        for pair in earlier_pairs
    }
    keep = np.ones(len(firsts), dtype=bool)
    for index, (first, second) in enumerate(zip(firsts.tolist(), seconds.tolist())):
        rows = (int(corpus.rows[first]), int(corpus.rows[second]))
        if (min(rows), max(rows)) in selected or corpus.hashes[first] == corpus.hashes[second]:
            keep[index] = False
    return firsts[keep], seconds[keep]


def _record(
    store: Store,
    corpus: Corpus,
    strategy: str,
    budget: int,
    seed: int,
    pool: CandidatePool,
    selection,
    decisive_votes: int,
    options: dict,
    rng: np.random.Generator,
) -> int:
    chosen = np.concatenate([pool.pair_a[selection.indices], pool.pair_b[selection.indices]])
    chosen_rows = corpus.rows[np.unique(chosen)].tolist()
    response_ids = {row.row: row.response_id for row in store.responses(chosen_rows)}

    with store.transaction() as db:
        cursor = db.execute(
            "INSERT INTO rounds (strategy, budget, seed, pool_size, votes_at_start, options, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (strategy, budget, seed, len(pool.pair_a), decisive_votes, json.dumps(options), utc_now()),
        )
        round_id = int(cursor.lastrowid)
        for rank, index in enumerate(selection.indices.tolist()):
            first = int(corpus.rows[pool.pair_a[index]])
            second = int(corpus.rows[pool.pair_b[index]])
            left_side = "a" if rng.random() < 0.5 else "b"
            db.execute(
                "INSERT INTO pairs (pair_id, prompt_row, response_a, response_b, round_id, rank, score, "
                "novelty, uncertainty, propensity, left_side) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    make_pair_id(response_ids[first], response_ids[second]),
                    int(corpus.prompt_rows[pool.pair_a[index]]),
                    first,
                    second,
                    round_id,
                    rank,
                    _finite_or_none(selection.scores[rank]),
                    _finite_or_none(selection.novelty[rank]),
                    _finite_or_none(selection.uncertainty[rank]),
                    _finite_or_none(selection.propensity[rank]),
                    left_side,
                ),
            )
    return round_id


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None
