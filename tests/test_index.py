"""Tests of engine.index against real FAISS, checked with brute-force numpy search."""

import faiss
import numpy as np
import pytest

from engine.errors import InputError
from engine.index import UnknownIdError, VectorIndex, faiss_gpu_count

DIMENSION = 32


def unit_vectors(rng: np.random.Generator, count: int) -> np.ndarray:
    vectors = rng.standard_normal((count, DIMENSION)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (ids (500,), vectors (500, D), queries (20, D)), seeded."""
    rng = np.random.default_rng(42)
    ids = rng.choice(10**12, size=500, replace=False).astype(np.int64)
    return ids, unit_vectors(rng, 500), unit_vectors(rng, 20)


@pytest.fixture
def index(data) -> VectorIndex:
    ids, vectors, _ = data
    built = VectorIndex(DIMENSION)
    built.add(ids, vectors)
    return built


def brute_force(ids, vectors, queries, k):
    sims = queries @ vectors.T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, axis=1), ids[order]


def test_search_matches_brute_force(index, data):
    ids, vectors, queries = data

    sims, found = index.search(queries, 10)
    expected_sims, expected_ids = brute_force(ids, vectors, queries, 10)

    assert found.dtype == np.int64
    np.testing.assert_array_equal(found, expected_ids)
    np.testing.assert_allclose(sims, expected_sims, atol=1e-5)


def test_search_pads_missing(data):
    ids, vectors, queries = data
    small = VectorIndex(DIMENSION)
    small.add(ids[:3], vectors[:3])

    sims, found = small.search(queries[:2], 5)

    assert found.shape == (2, 5)
    assert (found[:, 3:] == -1).all()
    assert (found[:, :3] >= 0).all()
    assert (sims[:, 3:] < -1e30).all()


def test_search_empty_index(data):
    _, _, queries = data

    sims, found = VectorIndex(DIMENSION).search(queries, 3)

    assert found.shape == (20, 3)
    assert (found == -1).all()


def test_search_invalid_k(index, data):
    _, _, queries = data

    with pytest.raises(InputError, match="invalid k 0"):
        index.search(queries, 0)


def test_add_float64_converted(data):
    ids, vectors, queries = data
    converted = VectorIndex(DIMENSION)
    converted.add(ids, vectors.astype(np.float64))

    _, found = converted.search(queries, 5)
    _, expected = brute_force(ids, vectors, queries, 5)

    np.testing.assert_array_equal(found, expected)


def test_ntotal_and_ids(index, data):
    ids, _, _ = data

    assert index.ntotal == 500
    assert index.dimension == DIMENSION
    np.testing.assert_array_equal(index.ids(), ids)


def test_reconstruct_returns_vectors(index, data):
    ids, vectors, _ = data
    picked = np.array([7, 0, 499, 7])

    reconstructed = index.reconstruct(ids[picked])

    assert reconstructed.shape == (4, DIMENSION)
    np.testing.assert_array_equal(reconstructed, vectors[picked])


def test_reconstruct_missing_id(index, data):
    ids, _, _ = data
    missing = int(ids.max()) + 1

    with pytest.raises(UnknownIdError, match=str(missing)):
        index.reconstruct(np.array([ids[0], missing]))


def test_reconstruct_error_is_key_error(index):
    with pytest.raises(KeyError):
        index.reconstruct(np.array([10**13]))


def test_duplicate_ids_in_add(data):
    ids, vectors, _ = data
    fresh = VectorIndex(DIMENSION)
    repeated = ids[:4].copy()
    repeated[3] = repeated[0]

    with pytest.raises(InputError, match=f"ids \\[{repeated[0]}\\] appear more than once"):
        fresh.add(repeated, vectors[:4])
    assert fresh.ntotal == 0


def test_duplicate_ids_existing(index, data):
    ids, vectors, _ = data

    with pytest.raises(InputError, match="already in the index"):
        index.add(np.array([ids[5], 10**13]), vectors[:2])
    assert index.ntotal == 500


def test_wrong_dimension_add(data):
    ids, _, _ = data

    with pytest.raises(InputError, match=r"shape \(3, 16\): expected \(N, 32\)"):
        VectorIndex(DIMENSION).add(ids[:3], np.zeros((3, 16), dtype=np.float32))


def test_wrong_dimension_search(index):
    with pytest.raises(InputError, match=r"expected \(N, 32\)"):
        index.search(np.zeros((2, 33), dtype=np.float32), 3)


def test_non_finite_rejected(data):
    ids, vectors, _ = data
    broken = vectors[:3].copy()
    broken[1, 4] = np.nan

    with pytest.raises(InputError, match=r"row\(s\) \[1\]"):
        VectorIndex(DIMENSION).add(ids[:3], broken)


def test_id_count_mismatch(data):
    ids, vectors, _ = data

    with pytest.raises(InputError, match="got 2 ids for 3 vectors"):
        VectorIndex(DIMENSION).add(ids[:2], vectors[:3])


@pytest.mark.parametrize(
    ("bad_ids", "message"),
    [
        (np.array([1.0, 2.0, 3.0]), "dtype float64"),
        (np.array([1, -1, 3]), "negative"),
        (np.array([[1, 2, 3]]), "1-D"),
    ],
)
def test_invalid_ids_rejected(data, bad_ids, message):
    _, vectors, _ = data

    with pytest.raises(InputError, match=message):
        VectorIndex(DIMENSION).add(bad_ids, vectors[:3])


def test_invalid_dimension_rejected():
    with pytest.raises(InputError, match="invalid index dimension 0"):
        VectorIndex(0)


def test_save_load_round_trip(index, data, tmp_path):
    ids, vectors, queries = data
    path = tmp_path / "vectors.faiss"

    index.save(path)
    loaded = VectorIndex.load(path)

    assert loaded.ntotal == 500
    assert loaded.dimension == DIMENSION
    np.testing.assert_array_equal(loaded.ids(), ids)
    np.testing.assert_array_equal(loaded.reconstruct(ids[:5]), vectors[:5])
    np.testing.assert_array_equal(loaded.search(queries, 7)[1], index.search(queries, 7)[1])
    assert [entry.name for entry in tmp_path.iterdir()] == ["vectors.faiss"]


def test_save_replaces_existing(index, data, tmp_path):
    ids, vectors, _ = data
    path = tmp_path / "vectors.faiss"
    smaller = VectorIndex(DIMENSION)
    smaller.add(ids[:2], vectors[:2])

    smaller.save(path)
    index.save(path)

    assert VectorIndex.load(path).ntotal == 500


def test_load_missing_file(tmp_path):
    path = tmp_path / "absent.faiss"

    with pytest.raises(InputError, match="absent.faiss not found"):
        VectorIndex.load(path)


def test_load_garbage_file(tmp_path):
    path = tmp_path / "garbage.faiss"
    path.write_bytes(b"not a faiss index at all")

    with pytest.raises(InputError, match="garbage.faiss is unreadable"):
        VectorIndex.load(path)


def test_load_foreign_index(tmp_path):
    path = tmp_path / "l2.faiss"
    faiss.write_index(faiss.IndexFlatL2(DIMENSION), str(path))

    with pytest.raises(InputError, match="expected an IndexIDMap2 over IndexFlatIP"):
        VectorIndex.load(path)


@pytest.mark.skipif(faiss_gpu_count() > 0, reason="checks the CPU-only path")
def test_cpu_search_no_gpu_copy(index, data):
    _, _, queries = data

    index.search(queries, 3)

    assert faiss_gpu_count() == 0
    assert index._gpu_flat is None


@pytest.mark.gpu
@pytest.mark.skipif(faiss_gpu_count() == 0, reason="needs faiss-gpu and a CUDA device")
def test_gpu_search_matches_brute_force(index, data):
    ids, vectors, queries = data

    sims, found = index.search(queries, 10)
    expected_sims, expected_ids = brute_force(ids, vectors, queries, 10)

    assert index._gpu_flat is not None
    np.testing.assert_array_equal(found, expected_ids)
    np.testing.assert_allclose(sims, expected_sims, atol=1e-5)
