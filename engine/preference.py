"""Bradley-Terry preference model over response embeddings, as a bootstrap ensemble.

Each member is a linear reward r(x) = w . phi(x) without bias, so p(a beats b) = sigmoid(w . d) with
d = phi(a) - phi(b), and swapping a and b gives exactly 1 - p. A member is L2-regularised logistic
regression fitted by Newton's method on one bootstrap resample of the votes. The spread between
members is the epistemic uncertainty that BALD reads.

Only decisive votes are training data. The caller passes `a` as label 1.0 and `b` as label 0.0 and
drops `tie`, `both_bad` and `skip` votes. A tie carries no direction for a model without a tie
parameter, and both_bad and skip carry no information about the order of a and b.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np

from engine.errors import InputError, PrefscoutError

logger = logging.getLogger(__name__)

# Newton's method stops when the Newton decrement (the predicted loss reduction, in nats summed
# over votes) falls below this, or after MAX_NEWTON_STEPS steps.
NEWTON_TOLERANCE = 1e-8
MAX_NEWTON_STEPS = 50

# Probabilities are clipped to [EPSILON, 1 - EPSILON] before taking logs.
EPSILON = 1e-12

# evaluate_heldout returns None below this many decisive votes.
MIN_HELDOUT_VOTES = 10


class PreferenceModel:
    """Ensemble of linear Bradley-Terry models over embedding differences.

    Args:
        n_members: ensemble size M. Each member is fitted on its own bootstrap resample.
        l2: L2 penalty lambda on the weights (the loss is the summed log loss plus
            lambda/2 * ||w||^2). It is also the lambda of the information matrix.
        seed: seed of the bootstrap resampling.

    After `fit`: `n_votes` is the number of training votes, `weights` the (M, D) member weights,
    `information_matrix` the (D, D) matrix V = lambda * I + sum of d d^T over the training votes,
    `map_weights` the (D,) fit on all votes and `posterior_covariance` the (D, D) covariance of the
    Laplace approximation around it.
    """

    def __init__(self, *, n_members: int = 8, l2: float = 1.0, seed: int = 0) -> None:
        if isinstance(n_members, bool) or not isinstance(n_members, int) or n_members < 1:
            raise InputError(f"n_members is {n_members!r}, expected an integer >= 1.")
        if not math.isfinite(l2) or l2 <= 0:
            raise InputError(
                f"l2 is {l2!r}, expected a finite value > 0 (it keeps Newton's method defined "
                "when votes are separable)."
            )
        self.n_members = n_members
        self.l2 = float(l2)
        self.seed = seed
        self.n_votes = 0
        self._weights: np.ndarray | None = None
        self._information: np.ndarray | None = None
        self._map_weights: np.ndarray | None = None
        self._covariance: np.ndarray | None = None

    @property
    def weights(self) -> np.ndarray:
        """Member weights, (M, D) float64."""
        return self._fitted(self._weights)

    @property
    def information_matrix(self) -> np.ndarray:
        """V = lambda * I + sum of d d^T over the training votes, (D, D) float64."""
        return self._fitted(self._information)

    @property
    def map_weights(self) -> np.ndarray:
        """Weights fitted on all votes (the posterior mode), (D,) float64."""
        return self._fitted(self._map_weights)

    @property
    def posterior_covariance(self) -> np.ndarray:
        """Laplace posterior covariance, (D, D) float64.

        It is the inverse of lambda * I + sum of p (1 - p) d d^T over the training votes, with p
        from `map_weights`: the inverse Hessian of the penalised loss at the posterior mode.
        """
        return self._fitted(self._covariance)

    @property
    def dim(self) -> int:
        return int(self.weights.shape[1])

    def fit(self, diffs: np.ndarray, labels: np.ndarray) -> PreferenceModel:
        """Fit every member on a bootstrap resample of the votes and return self.

        Args:
            diffs: (N, D) phi(a) - phi(b) of each decisive vote.
            labels: (N,) 1.0 where a beat b, 0.0 where b beat a.
        """
        diffs, labels = _validate_votes(diffs, labels)
        started = time.perf_counter()
        n_votes, dim = diffs.shape
        rng = np.random.default_rng(self.seed)

        # Every member starts from the fit on all votes, so it needs only a few Newton steps.
        full_fit = _fit_logistic(diffs, labels, np.ones(n_votes), self.l2, np.zeros(dim))
        weights = np.empty((self.n_members, dim))
        for member in range(self.n_members):
            counts = np.bincount(rng.integers(0, n_votes, size=n_votes), minlength=n_votes)
            weights[member] = _fit_logistic(diffs, labels, counts.astype(np.float64), self.l2, full_fit)

        information = diffs.T @ diffs
        information[np.diag_indices(dim)] += self.l2

        self._weights = weights
        self._information = information
        self._map_weights = full_fit
        self._covariance = np.linalg.inv(_penalised_hessian(diffs, np.ones(n_votes), self.l2, full_fit))
        self.n_votes = n_votes
        logger.info(
            "fitted preference model: %d votes, %d dims, %d members in %.2f s",
            n_votes,
            dim,
            self.n_members,
            time.perf_counter() - started,
        )
        return self

    def member_probabilities(self, diffs: np.ndarray) -> np.ndarray:
        """Return p(a beats b) under each member, (M, N) float64, for diffs (N, D).

        float32 diffs are multiplied in float32, which avoids a float64 copy of each block and
        keeps logits accurate to about 1e-6 relative.
        """
        array = self._check_diffs(diffs)
        weights = self.weights.astype(np.float32) if array.dtype == np.float32 else self.weights
        logits = (array @ weights.T).astype(np.float64)
        return _sigmoid(logits.T)

    def predict_proba(self, diffs: np.ndarray) -> np.ndarray:
        """Return the ensemble mean p(a beats b), (N,) float64, for diffs (N, D)."""
        return self.member_probabilities(diffs).mean(axis=0)

    def rewards(self, embeddings: np.ndarray) -> np.ndarray:
        """Return the ensemble mean reward w . phi(x) of each response, (R,) float64, for (R, D)."""
        return self._check_diffs(embeddings) @ self.weights.mean(axis=0)

    def _check_diffs(self, diffs: np.ndarray) -> np.ndarray:
        array = np.asarray(diffs)
        if array.ndim != 2 or array.shape[1] != self.dim:
            raise InputError(
                f"input has shape {array.shape}, expected (N, {self.dim}) to match the "
                "embedding dimension the model was fitted on."
            )
        return array

    def _fitted(self, value: np.ndarray | None) -> np.ndarray:
        if value is None:
            raise PrefscoutError("the preference model is not fitted: call fit(diffs, labels) first.")
        return value


def evaluate_heldout(
    diffs: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    **model_options: object,
) -> dict[str, float | int] | None:
    """Fit on some groups (prompts) and score the votes of the others.

    Args:
        diffs: (N, D) phi(a) - phi(b) of each decisive vote.
        labels: (N,) 1.0 where a beat b, 0.0 where b beat a.
        groups: (N,) group of each vote, usually its prompt, so no prompt is in both splits.
        test_fraction: share of the groups held out, rounded, at least one group and at most all
            but one.
        seed: seeds the split and, unless `model_options` sets it, the model.
        model_options: keyword arguments of `PreferenceModel`.

    Returns:
        {"accuracy", "log_likelihood" (mean per test vote, nats), "n_train", "n_test"}, or None
        when there are fewer than MIN_HELDOUT_VOTES votes or fewer than two groups. Accuracy
        counts p(a beats b) > 0.5 as a prediction of a, so p = 0.5 predicts b.
    """
    diffs, labels = _validate_votes(diffs, labels, allow_empty=True)
    groups = np.asarray(groups)
    if groups.shape != labels.shape:
        raise InputError(f"groups has shape {groups.shape}, expected {labels.shape}: one group per vote.")
    if not 0.0 < test_fraction < 1.0:
        raise InputError(f"test_fraction is {test_fraction!r}, expected a value strictly between 0 and 1.")

    unique_groups = np.unique(groups)
    if labels.size < MIN_HELDOUT_VOTES or unique_groups.size < 2:
        logger.info(
            "held-out evaluation skipped: %d votes in %d groups, need %d votes in 2 groups",
            labels.size,
            unique_groups.size,
            MIN_HELDOUT_VOTES,
        )
        return None

    rng = np.random.default_rng(seed)
    n_test_groups = min(max(1, round(test_fraction * unique_groups.size)), unique_groups.size - 1)
    test_groups = rng.permutation(unique_groups)[:n_test_groups]
    is_test = np.isin(groups, test_groups)

    model_options.setdefault("seed", seed)
    model = PreferenceModel(**model_options).fit(diffs[~is_test], labels[~is_test])

    probabilities = np.clip(model.predict_proba(diffs[is_test]), EPSILON, 1.0 - EPSILON)
    test_labels = labels[is_test]
    log_likelihood = test_labels * np.log(probabilities) + (1.0 - test_labels) * np.log1p(-probabilities)
    return {
        "accuracy": float(np.mean((probabilities > 0.5) == (test_labels == 1.0))),
        "log_likelihood": float(log_likelihood.mean()),
        "n_train": int((~is_test).sum()),
        "n_test": int(is_test.sum()),
    }


def _validate_votes(
    diffs: np.ndarray, labels: np.ndarray, *, allow_empty: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    diffs = np.asarray(diffs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    if diffs.ndim != 2 or labels.ndim != 1 or diffs.shape[0] != labels.shape[0]:
        raise InputError(
            f"diffs has shape {diffs.shape} and labels {labels.shape}, expected (N, D) and (N,)."
        )
    if labels.size == 0 and not allow_empty:
        raise InputError(
            "no decisive votes to fit: wait for a or b votes, and pass model=None to acquisition "
            "until then (cold start)."
        )
    if not np.isfinite(diffs).all():
        raise InputError("diffs contains NaN or infinite values: re-embed the responses of those votes.")

    invalid = np.flatnonzero((labels != 0.0) & (labels != 1.0))
    if invalid.size:
        raise InputError(
            f"labels[{int(invalid[0])}] is {labels[invalid[0]]!r}, expected 1.0 (a won) or 0.0 (b won): "
            "drop tie, both_bad and skip votes before fitting."
        )
    return diffs, labels


def _fit_logistic(
    diffs: np.ndarray, labels: np.ndarray, counts: np.ndarray, l2: float, start: np.ndarray
) -> np.ndarray:
    """Minimise sum(counts * log loss) + l2/2 * ||w||^2 by Newton's method with backtracking.

    Takes diffs (N, D), labels (N,), counts (N,) vote multiplicities and start (D,), and returns
    w (D,).
    """
    weights = start.copy()
    loss = _penalised_loss(diffs, labels, counts, l2, weights)
    for _ in range(MAX_NEWTON_STEPS):
        probabilities = _sigmoid(diffs @ weights)
        gradient = diffs.T @ (counts * (probabilities - labels)) + l2 * weights
        hessian = _penalised_hessian(diffs, counts, l2, weights, probabilities)
        step = np.linalg.solve(hessian, gradient)

        decrement = float(gradient @ step)
        if decrement / 2.0 < NEWTON_TOLERANCE:
            break

        # Backtracking keeps each step a descent step when the quadratic model overshoots.
        size = 1.0
        while True:
            candidate = weights - size * step
            candidate_loss = _penalised_loss(diffs, labels, counts, l2, candidate)
            if candidate_loss <= loss - 0.25 * size * decrement or size < 1e-10:
                break
            size /= 2.0
        weights, loss = candidate, candidate_loss
    return weights


def _penalised_hessian(
    diffs: np.ndarray,
    counts: np.ndarray,
    l2: float,
    weights: np.ndarray,
    probabilities: np.ndarray | None = None,
) -> np.ndarray:
    """Return the Hessian of the penalised loss at weights, (D, D): sum of counts p (1 - p) d d^T + l2 I."""
    if probabilities is None:
        probabilities = _sigmoid(diffs @ weights)
    curvature = counts * probabilities * (1.0 - probabilities)
    hessian = (diffs * curvature[:, None]).T @ diffs
    hessian[np.diag_indices_from(hessian)] += l2
    return hessian


def _penalised_loss(
    diffs: np.ndarray, labels: np.ndarray, counts: np.ndarray, l2: float, weights: np.ndarray
) -> float:
    logits = diffs @ weights
    # log(1 + exp(-z)) for the winner's side, computed without overflow.
    signed = np.where(labels == 1.0, logits, -logits)
    return float(counts @ np.logaddexp(0.0, -signed) + 0.5 * l2 * weights @ weights)


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -values))
