"""One behavioural suite run against every index backend (implicit's RecommenderBaseTestMixin
pattern): each backend class supplies ``_make_index()``; exact search is the oracle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from index_fixtures import assert_exact_topk, brute_force_topk, clustered

from recsys_cl.index import (
    SENTINEL_ID,
    AnnoyIndex,
    ExactIndex,
    FaissIndex,
    Index,
    IndexLoadError,
    IndexMismatchError,
    Manifest,
    augment_inner_product,
    check_compatible,
    choose_backend,
    embedding_hash,
    faiss_available,
    load_index,
    recall_at_k,
    tune_search_k,
)

K = 10


class IndexSuite:
    """Behaviour every backend must have. Subclasses implement ``_make_index``."""

    min_recall = 0.9

    def _make_index(self) -> Index:
        raise NotImplementedError

    @pytest.fixture
    def data(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return clustered()

    @pytest.fixture
    def built(self, data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> Index:
        items, ids, _ = data
        index = self._make_index()
        index.build(items, ids)
        if not index.is_exact:
            tune_search_k(index, brute_force_topk(items, ids, data[2], K), data[2], K, target_recall=0.95)
        return index

    def test_query_shapes_and_order(self, built: Index, data: tuple) -> None:
        _, ids, queries = data
        out_ids, scores = built.query(queries, K)
        assert out_ids.shape == scores.shape == (len(queries), K)
        assert scores.dtype == np.float32
        assert (np.diff(scores, axis=1) <= 1e-6).all(), "scores must be descending"
        assert np.isin(out_ids, ids).all(), "results must be original item ids, not row numbers"
        one_ids, _ = built.query(queries[0], K)  # a single (D,) query is (1, K)
        assert one_ids.shape == (1, K)

    def test_scores_are_true_inner_products(self, built: Index, data: tuple) -> None:
        items, ids, queries = data
        out_ids, scores = built.query(queries[:20], K)
        row_of = {int(i): r for r, i in enumerate(ids)}
        expected = np.array([[queries[q] @ items[row_of[int(i)]] for i in row] for q, row in enumerate(out_ids)])
        np.testing.assert_allclose(scores, expected, atol=1e-5)

    def test_recall_against_known_answer(self, built: Index, data: tuple) -> None:
        items, ids, queries = data
        truth = brute_force_topk(items, ids, queries, K)
        recall = recall_at_k(built.query(queries, K)[0], truth)
        assert recall >= (1.0 if built.is_exact else self.min_recall), recall

    def test_save_load_round_trip(self, built: Index, data: tuple, tmp_path: Path) -> None:
        _, _, queries = data
        before = built.query(queries, K)
        built.save(tmp_path / "idx", built.default_manifest(model_uri="models:/m/1", model_version="1"))
        manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
        assert manifest["backend"] == built.name and manifest["item_count"] == 4000
        loaded = load_index(tmp_path / "idx")
        assert type(loaded) is type(built)
        assert loaded.manifest is not None and loaded.manifest.model_version == "1"
        after = loaded.query(queries, K)
        np.testing.assert_array_equal(after[0], before[0])
        np.testing.assert_allclose(after[1], before[1], atol=1e-6)
        assert type(built).load(tmp_path / "idx").size == 4000

    def test_fewer_items_than_k_pads_with_sentinel(self) -> None:
        items, ids, queries = clustered(m=5, clusters=2, q=3)
        index = self._make_index()
        index.build(items, ids)
        out_ids, scores = index.query(queries, 8)
        assert out_ids.shape == (3, 8)
        assert (out_ids[:, 5:] == SENTINEL_ID).all() and np.isneginf(scores[:, 5:]).all()
        assert sorted(out_ids[0, :5]) == sorted(ids)

    def test_string_ids(self) -> None:
        items, ids, queries = clustered(m=300, clusters=5, q=5)
        sids = np.array([f"item-{i}" for i in ids])
        index = self._make_index()
        index.build(items, sids)
        out_ids, _ = index.query(queries, 5)
        assert out_ids.dtype.kind == "U" and np.isin(out_ids, sids).all()

    def test_missing_file_is_a_clear_error(self, built: Index, tmp_path: Path) -> None:
        built.save(tmp_path / "idx")
        victim = next(p for p in (tmp_path / "idx").iterdir() if p.name != "manifest.json")
        victim.unlink()
        with pytest.raises(IndexLoadError, match=r"missing.*build_index"):
            load_index(tmp_path / "idx")

    def test_corrupt_file_is_a_clear_error(self, built: Index, tmp_path: Path) -> None:
        built.save(tmp_path / "idx")
        for p in (tmp_path / "idx").iterdir():
            if p.name != "manifest.json":
                p.write_bytes(b"garbage" * 3)
        with pytest.raises(IndexLoadError, match="build_index"):
            load_index(tmp_path / "idx")

    def test_damaged_bytes_behind_an_intact_header_are_refused(self, built: Index, tmp_path: Path) -> None:
        """Flipped bytes mid-file still parse (npy / annoy / faiss headers intact) and would serve
        wrong scores; the per-file checksums in the manifest catch them."""
        built.save(tmp_path / "idx")
        names = [p.name for p in (tmp_path / "idx").iterdir() if p.name != "manifest.json"]
        for name in names:
            copy = tmp_path / f"copy-{name}"
            shutil.copytree(tmp_path / "idx", copy)
            raw = bytearray((copy / name).read_bytes())
            mid = len(raw) // 2
            raw[mid:mid + 64] = bytes(b ^ 0xFF for b in raw[mid:mid + 64])
            (copy / name).write_bytes(bytes(raw))
            with pytest.raises(IndexLoadError, match=rf"{name} does not match the checksum .*corrupt.*build_index"):
                load_index(copy)
        manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
        assert sorted(manifest["files_sha256"]) == sorted(names)
        del manifest["files_sha256"]  # written before checksums existed: still loads
        (tmp_path / "idx" / "manifest.json").write_text(json.dumps(manifest))
        assert load_index(tmp_path / "idx").size == built.size

    def test_files_that_do_not_hash_to_the_embedding_hash_are_refused(
        self, built: Index, data: tuple, tmp_path: Path
    ) -> None:
        """Without per-file checksums (an older or edited manifest), a reordered item_ids.npy would
        serve every item under another's id; the embedding hash (vectors + ids) still catches it."""
        items, ids, _ = data
        built.save(tmp_path / "idx", built.default_manifest(embedding_hash=embedding_hash(items, ids)))
        manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
        del manifest["files_sha256"]
        (tmp_path / "idx" / "manifest.json").write_text(json.dumps(manifest))
        assert load_index(tmp_path / "idx").size == len(ids)  # the stored items hash as built
        np.save(tmp_path / "idx" / "item_ids.npy", np.roll(ids, 1))
        with pytest.raises(IndexLoadError, match=r"the stored item vectors and ids hash to [0-9a-f]{12}\.\.\., not to "
                                                 r"the embedding_hash .*corrupt; rebuild it"):
            load_index(tmp_path / "idx")

    def test_bad_queries_are_rejected(self, built: Index) -> None:
        with pytest.raises(ValueError, match=r"\(Q, 16\)"):
            built.query(np.zeros((2, 3), dtype=np.float32), K)

    def test_ids_are_the_built_rows_ids(self, built: Index, data: tuple) -> None:
        np.testing.assert_array_equal(built.ids, data[1])

    def test_exclusion_is_exact_search_only(self, built: Index, data: tuple) -> None:
        """Approximate backends do not exclude while searching (the candidates job fetches deeper)."""
        assert built.supports_exclusion == built.is_exact
        if not built.supports_exclusion:
            with pytest.raises(NotImplementedError, match="cannot exclude items"):
                built.query_excluding(data[2][:2], K, np.array([0, 1, 1]), np.array([0]))


class TestExactIndex(IndexSuite):
    def _make_index(self) -> Index:
        return ExactIndex(max_block_bytes=4 * 4000 * 7)  # several blocks of 7 queries

    def test_exact_matches_full_sort(self, built: Index, data: tuple) -> None:
        items, ids, queries = data
        assert_exact_topk(built.query(queries, 50)[0], items, ids, queries, 50)

    def test_query_equals_the_plain_matrix_product_top_k(self, built: Index, data: tuple) -> None:
        """The blocks are scored as ``(-q) @ v.T`` (no negated copy of the block): the ids and
        scores are those of sorting ``q @ v.T`` by (-score, row), equal as numbers (a score of
        exactly zero may come back as -0.0)."""
        items, ids, queries = data
        got_ids, got_scores = built.query(queries, 25)
        assert isinstance(built, ExactIndex)
        block = built.max_block_bytes // (4 * len(items))  # the same blocks: BLAS's last bit can depend on shape
        scores = np.concatenate([queries[s : s + block] @ items.T for s in range(0, len(queries), block)])
        order = np.lexsort((np.broadcast_to(np.arange(len(items)), scores.shape), -scores), axis=1)[:, :25]
        np.testing.assert_array_equal(got_ids, ids[order])
        np.testing.assert_array_equal(got_scores, np.take_along_axis(scores, order, axis=1))


@pytest.mark.parametrize("block_queries", [1, 4, 100])
@pytest.mark.parametrize("k", [1, 5, 29, 30, 40])
def test_query_excluding_is_the_masked_matrix_product_top_k(k: int, block_queries: int) -> None:
    """query_excluding = the rows of a full lexsort of ``q @ v.T`` by (-score, row) with each query's
    excluded rows scored -inf (repeats allowed; none, some, all of them), in blocks of any size;
    -1 / -inf pad a catalogue smaller than K."""
    rng = np.random.default_rng(k)
    M, D, Q = 30, 4, 9
    items = rng.integers(-2, 3, (M, D)).astype(np.float32)  # small integers: ties, exact sums
    queries = rng.integers(-2, 3, (Q, D)).astype(np.float32)
    index = ExactIndex(max_block_bytes=4 * M * block_queries)
    index.build(items, np.arange(M) * 2 + 1)
    excluded = [rng.integers(0, M, int(rng.integers(0, 2 * M))) for _ in range(Q)]
    excluded[0], excluded[1] = np.zeros(0, dtype=np.int64), np.arange(M)
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in excluded])])
    rows, scores = index.query_excluding(queries, k, offsets, np.concatenate(excluded))
    masked = queries @ items.T
    for q in range(Q):
        masked[q, excluded[q]] = -np.inf
    order = np.lexsort((np.broadcast_to(np.arange(M), masked.shape), -masked), axis=1)[:, :k]
    pad = max(k - M, 0)
    np.testing.assert_array_equal(rows, np.pad(order, ((0, 0), (0, pad)), constant_values=-1))
    np.testing.assert_array_equal(
        scores, np.pad(np.take_along_axis(masked, order, axis=1), ((0, 0), (0, pad)), constant_values=-np.inf))
    assert rows.shape == scores.shape == (Q, k) and rows.dtype == np.int64 and scores.dtype == np.float32
    # nothing excluded: query()'s rows and scores
    none = index.query_excluding(queries, k, np.zeros(Q + 1, dtype=np.int64), np.zeros(0, dtype=np.int64))
    ids, plain = index.query(queries, k)
    np.testing.assert_array_equal(np.where(none[0] >= 0, none[0] * 2 + 1, -1), ids)
    np.testing.assert_array_equal(none[1], plain)


def test_query_excluding_rejects_bad_exclusions() -> None:
    index = ExactIndex()
    index.build(np.eye(3, dtype=np.float32), np.arange(3))
    q = np.ones((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match=r"CSR offsets of shape \(3,\) for 2 queries"):
        index.query_excluding(q, 2, np.array([0, 1]), np.array([0]))
    with pytest.raises(ValueError, match="non-decreasing"):
        index.query_excluding(q, 2, np.array([0, 2, 1]), np.array([0, 1]))
    with pytest.raises(ValueError, match="outside the 1 exclude_rows"):
        index.query_excluding(q, 2, np.array([0, 1, 2]), np.array([0]))
    with pytest.raises(ValueError, match=r"index rows in \[0, 3\)"):
        index.query_excluding(q, 2, np.array([0, 1, 2]), np.array([0, 3]))


@pytest.mark.parametrize("k", [1, 3, 6])
def test_topk_rows_of_negated_scores_equals_topk_rows(k: int) -> None:
    from recsys_cl.index.exact import topk_rows

    rng = np.random.default_rng(0)
    scores = rng.integers(-3, 4, (40, 6)).astype(np.float32)  # many ties, and zeros
    want_idx, want_vals = topk_rows(scores, k)
    for neg in (-scores, (-np.eye(40, 3, dtype=np.float32)) @ rng.standard_normal((3, 6)).astype(np.float32)):
        plain = topk_rows(-neg, k)
        got = topk_rows(neg, k, negated=True)
        np.testing.assert_array_equal(got[0], plain[0])
        np.testing.assert_array_equal(got[1], plain[1])
    assert want_idx.shape == (40, k) and (np.diff(want_vals, axis=1) <= 0).all()
    tied = np.take_along_axis(scores, want_idx, axis=1)  # ties keep the lower column first
    same = tied[:, 1:] == tied[:, :-1]
    assert (want_idx[:, 1:][same] > want_idx[:, :-1][same]).all()


def _special_scores(rng: np.random.Generator, shape: tuple[int, int], dtype: type) -> np.ndarray:
    """Scores full of ties, both zeros, infinities, NaN and extremes."""
    scores = rng.integers(-3, 4, shape).astype(dtype) / 2
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 3.4e38, -3.4e38], dtype=dtype)
    hit = rng.random(shape) < 0.3
    scores[hit] = rng.choice(special, int(hit.sum()))
    scores[0] = -0.0  # a row of zeros of both signs: the column order decides alone
    scores[0, ::3] = 0.0
    return scores


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sort_by_value_then_column_is_lexsort(dtype: type) -> None:
    """The uint64 sort keys (float32) and the lexsort fallback order each row's columns exactly as
    ``np.lexsort((columns, values))``: NaN last, -0.0 tied with 0.0, ties by column."""
    from recsys_cl.index.exact import _sort_by_value_then_column

    rng = np.random.default_rng(0)
    values = _special_scores(rng, (60, 50), dtype)
    columns = np.argsort(rng.random((60, 200)), axis=1)[:, :50]  # a shuffled subset of columns per row
    want = np.take_along_axis(columns, np.lexsort((columns, values), axis=1), axis=1)
    got = _sort_by_value_then_column(values, columns)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.int64


@pytest.mark.parametrize("k", [1, 7, 40, 63, 64])
def test_topk_rows_is_the_first_k_of_a_lexsort(k: int) -> None:
    """topk_rows is the first k columns of each row ordered by (-score, column), as a full
    np.lexsort orders them, ties at the k-th score included (argpartition alone keeps an arbitrary
    subset of those); the values are the row's own entries there (signs of zero included)."""
    from recsys_cl.index.exact import topk_rows

    scores = _special_scores(np.random.default_rng(k), (50, 64), np.float32)
    scores[1, :] = np.nan  # a row of NaN: the lowest k columns
    scores[2, :] = 1.0  # every column tied
    scores[3, :40] = -np.inf  # ties at -inf at the boundary
    neg = -scores  # what topk_rows partitions either way
    for negated in (False, True):
        cols = np.broadcast_to(np.arange(64), neg.shape)
        want = np.lexsort((cols, neg), axis=1)[:, :k]
        got_idx, got_vals = topk_rows(neg if negated else scores, k, negated=negated)
        np.testing.assert_array_equal(got_idx, want)
        want_vals = -np.take_along_axis(neg, want, axis=1)
        np.testing.assert_array_equal(got_vals.view(np.uint32), want_vals.view(np.uint32))


@pytest.mark.parametrize("k", [300, 500])
def test_exact_query_ranks_deep_fetches_as_a_lexsort(k: int) -> None:
    """A deep fetch (K + |seen| of a heavy user: most of the catalogue) over real scores: ExactIndex's
    ids and scores are those of lexsorting the block's scores by (-score, row); ties between distinct
    items (equal vectors) are ordered by row when the fetch takes all of them."""
    rng = np.random.default_rng(3)
    items = rng.standard_normal((500, 8)).astype(np.float32)
    if k == 500:
        items[250:260] = items[0]
    queries = rng.standard_normal((30, 8)).astype(np.float32)
    ids = np.arange(500, dtype=np.int64) * 3 + 11
    index = ExactIndex()
    index.build(items, ids)
    got_ids, got_scores = index.query(queries, k)
    scores = queries @ items.T
    order = np.lexsort((np.broadcast_to(np.arange(500), scores.shape), -scores), axis=1)[:, :k]
    np.testing.assert_array_equal(got_ids, ids[order])
    np.testing.assert_array_equal(got_scores, np.take_along_axis(scores, order, axis=1))


class TestAnnoyIndex(IndexSuite):
    def _make_index(self) -> Index:
        return AnnoyIndex(n_trees=10, seed=1)

    def test_threads_give_the_same_answer(self, built: Index, data: tuple) -> None:
        assert isinstance(built, AnnoyIndex)
        one = built.query(data[2], K)
        built.n_jobs = 2
        np.testing.assert_array_equal(built.query(data[2], K)[0], one[0])

    def test_mips_augmentation_ranks_by_dot_product(self) -> None:
        items, ids, queries = clustered(normalize=False, seed=3)
        items *= np.random.default_rng(3).uniform(0.2, 3.0, (len(items), 1)).astype(np.float32)  # varied norms
        truth = brute_force_topk(items, ids, queries, K)
        index = AnnoyIndex(n_trees=10, seed=1)
        index.build(items, ids)
        assert index.params()["mips_augmented"]
        tune_search_k(index, truth, queries, K, 0.95)
        assert recall_at_k(index.query(queries, K)[0], truth) >= 0.9
        # the augmented vectors all have the max norm, and q̃·x̃ = q·x
        aug, max_norm = augment_inner_product(items)
        np.testing.assert_allclose(np.linalg.norm(aug, axis=1), max_norm, rtol=1e-4)
        # ranking by cosine on the raw vectors (no augmentation) would be wrong here
        cos = (queries @ items.T) / np.linalg.norm(items, axis=1)
        assert recall_at_k(ids[np.argsort(-cos, axis=1)[:, :K]], truth) < 0.8


@pytest.mark.skipif(not faiss_available(), reason="faiss-cpu not installed (pip install 'recsys_cl[ann]')")
class TestFaissIndex(IndexSuite):
    def _make_index(self) -> Index:
        return FaissIndex(nlist=64, nprobe=1)

    def test_small_catalogue_lowers_nlist_with_a_note(self) -> None:
        items, ids, _ = clustered(m=400, clusters=5, q=1)
        index = FaissIndex(nlist=1024)
        index.build(items, ids)
        assert index.params()["nlist"] == 10 and "lowered" in index.params()["note"]

    def test_unnormalized_inner_product(self) -> None:
        items, ids, queries = clustered(normalize=False, seed=3)
        items *= np.random.default_rng(3).uniform(0.2, 3.0, (len(items), 1)).astype(np.float32)
        truth = brute_force_topk(items, ids, queries, K)
        index = FaissIndex(nlist=64)
        index.build(items, ids)
        tune_search_k(index, truth, queries, K, 0.95)
        assert recall_at_k(index.query(queries, K)[0], truth) >= 0.9


# ---------------------------------------------------------------------------------------------
# Manifest, compatibility, load errors, auto choice
# ---------------------------------------------------------------------------------------------


def _manifest(**kw: object) -> Manifest:
    base: dict[str, object] = {
        "backend": "exact", "item_count": 10, "embedding_dim": 8, "model_uri": "models:/m/3",
        "model_name": "m", "model_version": "3", "model_run_id": "abc", "embedding_hash": "f" * 64,
    }
    return Manifest(**{**base, **kw})  # type: ignore[arg-type]


def test_check_compatible_accepts_the_same_model() -> None:
    check_compatible(_manifest(), model_uri="models:/m@champion", model_version="3", model_run_id="abc",
                     embedding_dim=8, embedding_hash="f" * 64)


@pytest.mark.parametrize("kw, field", [
    ({"model_version": 4}, "model_version"),
    ({"model_run_id": "xyz"}, "model_run_id"),
    ({"embedding_dim": 16}, "embedding_dim"),
    ({"embedding_hash": "0" * 64}, "embedding_hash"),
])
def test_check_compatible_refuses_another_model(kw: dict, field: str) -> None:
    with pytest.raises(IndexMismatchError, match=rf"{field}.*Fix: rebuild it with `python -m pipelines.build_index"):
        check_compatible(_manifest(), **kw)


def test_check_compatible_refuses_a_manifest_without_embedding_hash() -> None:
    """Identity keys removed from another model's manifest: nothing ties it to this model."""
    bare = _manifest(embedding_hash="", model_run_id=None, model_version=None, model_name=None, model_uri=None)
    with pytest.raises(IndexMismatchError, match=r"embedding_hash: the index manifest has none.*Fix: rebuild it "
                                                 r"with `python -m pipelines\.build_index --model runs:/x/model"):
        check_compatible(bare, model_uri="runs:/x/model", model_run_id="x", embedding_dim=8,
                         embedding_hash="f" * 64)
    check_compatible(bare, embedding_dim=8)  # no model to check against: nothing to refuse


def test_a_manifest_from_a_newer_recsys_cl_is_refused(tmp_path: Path) -> None:
    items, ids, _ = clustered(m=50, clusters=2, q=1)
    index = ExactIndex()
    index.build(items, ids)
    index.save(tmp_path, index.default_manifest())
    m = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**m, "manifest_version": 99}))
    with pytest.raises(IndexLoadError, match=r"manifest_version 99 is newer than this recsys_cl reads \(1\).*upgrade "
                                             r"recsys_cl, or rebuild it"):
        load_index(tmp_path)


def test_missing_directory_and_manifest(tmp_path: Path) -> None:
    with pytest.raises(IndexLoadError, match="does not exist.*build_index"):
        load_index(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IndexLoadError, match="manifest.json is missing"):
        load_index(tmp_path / "empty")
    (tmp_path / "empty" / "manifest.json").write_text("{}")
    with pytest.raises(IndexLoadError, match="is a file; pass the index directory that holds manifest.json"):
        load_index(tmp_path / "empty" / "manifest.json")


@pytest.mark.parametrize("text, match", [
    ("{not json", "not valid JSON"),
    ('{"backend": "exact"}', "missing required keys"),
    ('{"backend": "hnsw", "item_count": 1, "embedding_dim": 2}', "unknown backend 'hnsw'"),
])
def test_corrupt_manifest(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(IndexLoadError, match=match):
        load_index(tmp_path)


def test_manifest_count_mismatch_is_corruption(tmp_path: Path) -> None:
    items, ids, _ = clustered(m=50, clusters=2, q=1)
    index = ExactIndex()
    index.build(items, ids)
    index.save(tmp_path, index.default_manifest())
    m = json.loads((tmp_path / "manifest.json").read_text())
    m["item_count"] = 49
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexLoadError, match="corrupt"):
        load_index(tmp_path)


@pytest.mark.parametrize("key, value, expected", [
    ("embedding_dim", "16", r"embedding_dim must be a positive integer, found \"16\" \(str\)"),
    ("item_count", 0, r"item_count must be a positive integer, found 0 \(int\)"),
    ("item_count", True, r"item_count must be a positive integer, found true \(bool\)"),
    ("backend", 1, r"backend must be a string, found 1 \(int\)"),
    ("files_sha256", [], r"files_sha256 must be a JSON object, found \[\] \(list\)"),
])
def test_manifest_field_of_the_wrong_type_is_named(tmp_path: Path, key: str, value: object, expected: str) -> None:
    """``"embedding_dim": "32"`` used to pass and then fail as "32 dims but the files hold ... x 32"."""
    items, ids, _ = clustered(m=50, clusters=2, q=1)
    index = ExactIndex()
    index.build(items, ids)
    index.save(tmp_path, index.default_manifest())
    m = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**m, key: value}))
    with pytest.raises(IndexLoadError, match=rf"manifest\.json: {expected}; the manifest was edited or damaged, "
                                             r"rebuild it with `python -m pipelines\.build_index"):
        load_index(tmp_path)


def test_embedding_hash_depends_on_vectors_and_ids() -> None:
    items, ids, _ = clustered(m=50, clusters=2, q=1)
    h = embedding_hash(items, ids)
    assert h == embedding_hash(items.copy(), ids.copy()) and len(h) == 64
    assert h != embedding_hash(items, ids[::-1].copy())
    assert h != embedding_hash(items + 1e-3, ids)


def test_auto_picks_a_backend_meeting_the_target_with_a_reason() -> None:
    items, ids, queries = clustered()
    exact = ExactIndex()
    exact.build(items, ids)
    truth = exact.query(queries, K)[0]
    candidates: list[Index] = [exact, AnnoyIndex(n_trees=10)]
    if faiss_available():
        candidates.append(FaissIndex(nlist=64))
    for c in candidates[1:]:
        c.build(items, ids)
        tune_search_k(c, truth, queries, K, 0.95)
    choice = choose_backend(candidates, queries, K, target_recall=0.95, min_seconds=0.05)
    row = next(r for r in choice.table if r["backend"] == choice.index.name)
    assert row["qualifies"] and (choice.index.is_exact or row["recall"] >= 0.95)
    assert row["queries_per_s"] == max(r["queries_per_s"] for r in choice.table if r["qualifies"])
    assert choice.reason.startswith(choice.index.name) and "recall@10 >= 0.95" in choice.reason
    assert {r["backend"] for r in choice.table} == {c.name for c in candidates}


def test_auto_never_chooses_a_backend_below_target() -> None:
    items, ids, queries = clustered()
    exact = ExactIndex()
    exact.build(items, ids)
    bad = AnnoyIndex(n_trees=1, search_k=10)  # far too few nodes for recall 0.99
    bad.build(items, ids)
    choice = choose_backend([exact, bad], queries, K, target_recall=0.99, min_seconds=0.01)
    assert choice.index is exact and "annoy recall" in choice.reason


def test_build_and_tune_meets_the_target_at_the_fetch_depth() -> None:
    """The candidate job fetches K + |seen| and drops the seen items, so the index is tuned at that
    depth: recall@(K + extra) meets the target, and an index tuned at K alone does not go as deep."""
    from recsys_cl.config import IndexConfig
    from recsys_cl.index.build import ItemEmbeddings, build_and_tune

    items, ids, queries = clustered()
    emb = ItemEmbeddings(items, ids, normalized=True)
    cfg = IndexConfig(backend="annoy", k=K, n_trees=2, target_recall=0.95)
    at_k, fields_k = build_and_tune(emb, queries, cfg)
    deep, fields = build_and_tune(emb, queries, cfg, fetch_extra=90)
    assert (fields_k["recall_k"], fields["recall_k"]) == (K, K + 90)
    truth = brute_force_topk(items, ids, queries, K + 90)
    for index, f in ((deep, fields), (at_k, fields_k)):
        got = index.query(queries, K + 90)[0]
        recall = np.mean([len(set(g) & set(t)) / len(t) for g, t in zip(got, truth)])  # slow reference
        if index is deep:
            assert f["recall_at_k"] == pytest.approx(recall) and recall >= 0.95
        else:
            assert recall < 0.95  # tuned at K, it misses the target at the depth the job reads
    assert deep.params()["search_k"] > at_k.params()["search_k"]


def test_build_and_tune_reports_the_numbers_auto_chose_on() -> None:
    """The printout's recall and queries/s are the ones in the reason auto gives, not a second measurement."""
    from recsys_cl.config import IndexConfig
    from recsys_cl.index.build import ItemEmbeddings, build_and_tune

    items, ids, queries = clustered()
    index, fields = build_and_tune(ItemEmbeddings(items, ids, True), queries,
                                   IndexConfig(backend="auto", k=K, auto_backends=("exact", "annoy")))
    row = next(r for r in fields["tuning"] if r["backend"] == index.name and "qualifies" in r)
    assert (fields["recall_at_k"], fields["queries_per_s"]) == (row["recall"], row["queries_per_s"])
    assert f"{row['queries_per_s']:,.0f} q/s" in fields["chosen_reason"]
    assert (fields["recall_at_k_all"], fields["recall_at_k_active"]) == (row["recall"], None)


def test_auto_keeps_the_whole_samples_and_the_served_users_recall() -> None:
    """auto chose on the lower of the two; the manifest fields keep each, and the lower is the table's."""
    from recsys_cl.config import IndexConfig
    from recsys_cl.index.build import ItemEmbeddings, build_and_tune

    items, ids, queries = clustered()
    served = np.arange(len(queries)) % 3 == 0
    index, fields = build_and_tune(ItemEmbeddings(items, ids, True), queries,
                                   IndexConfig(backend="auto", k=K, auto_backends=("exact", "annoy"), n_trees=2),
                                   also=served)
    truth = brute_force_topk(items, ids, queries, K)
    got = index.query(queries, K)[0]
    recall = np.array([len(set(g) & set(t)) / len(t) for g, t in zip(got, truth)])  # slow reference
    assert fields["recall_at_k_all"] == pytest.approx(recall.mean())
    assert fields["recall_at_k_active"] == pytest.approx(recall[served].mean())
    row = next(r for r in fields["tuning"] if r["backend"] == index.name and "qualifies" in r)
    assert fields["recall_at_k"] == row["recall"] == min(fields["recall_at_k_all"], fields["recall_at_k_active"])


def test_manifests_without_the_split_recall_still_load(tmp_path: Path) -> None:
    """Manifests written before recall_at_k_all / recall_at_k_active existed load, the two as None."""
    items, ids, _ = clustered(m=50, clusters=2, q=1)
    index = ExactIndex()
    index.build(items, ids)
    index.save(tmp_path / "idx", index.default_manifest(embedding_hash=embedding_hash(items, ids), recall_at_k=1.0,
                                                        recall_at_k_all=1.0, recall_at_k_active=1.0))
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert (manifest["recall_at_k_all"], manifest["recall_at_k_active"]) == (1.0, 1.0)
    del manifest["recall_at_k_all"], manifest["recall_at_k_active"]
    (tmp_path / "idx" / "manifest.json").write_text(json.dumps(manifest))
    m = load_index(tmp_path / "idx").manifest
    assert m is not None and m.recall_at_k == 1.0 and (m.recall_at_k_all, m.recall_at_k_active) == (None, None)


def test_the_embedding_hash_is_recomputed_only_without_file_checksums(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files matching files_sha256 are the build's bytes: no second pass over the vectors at load."""
    items, ids, _ = clustered(m=50, clusters=2, q=1)
    index = ExactIndex()
    index.build(items, ids)
    index.save(tmp_path / "idx", index.default_manifest(embedding_hash=embedding_hash(items, ids)))
    calls: list[int] = []
    monkeypatch.setattr(ExactIndex, "stored_items", lambda self: calls.append(1) or (self._vectors, self._ids))
    load_index(tmp_path / "idx")
    assert calls == []
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    del manifest["files_sha256"]
    (tmp_path / "idx" / "manifest.json").write_text(json.dumps(manifest))
    load_index(tmp_path / "idx")
    assert calls == [1]


def test_sample_recall_hand_worked() -> None:
    """Two queries find both of their 2 true items, two find one: 6 / 8 on the whole sample, 2 / 4 on
    those two alone; with ``also`` the lower of the two counts."""
    from recsys_cl.index.tuning import sample_recall

    exact = np.array([[1, 2], [3, 4], [5, 6], [7, 8]])
    approx = np.array([[2, 1], [3, 4], [5, 9], [0, 8]])
    assert sample_recall(approx, exact) == 0.75
    assert sample_recall(approx, exact, np.array([False, False, True, True])) == 0.5
    assert sample_recall(approx, exact, np.array([True, True, False, False])) == 0.75  # the whole sample is lower
    assert sample_recall(approx, exact, np.ones(4, bool)) == sample_recall(approx, exact, np.zeros(4, bool)) == 0.75


def test_split_recall_keeps_both_numbers() -> None:
    """The same hand-worked sample: the whole sample's 6 / 8 and the subset's own, which sample_recall
    folds into one minimum; None when there is no subset to tell apart."""
    from recsys_cl.index.tuning import split_recall

    exact = np.array([[1, 2], [3, 4], [5, 6], [7, 8]])
    approx = np.array([[2, 1], [3, 4], [5, 9], [0, 8]])
    assert split_recall(approx, exact, np.array([False, False, True, True])) == (0.75, 0.5)
    assert split_recall(approx, exact, np.array([True, True, False, False])) == (0.75, 1.0)
    assert split_recall(approx, exact, np.ones(4, bool)) == (0.75, 0.75)  # every query is the subset's
    assert split_recall(approx, exact) == split_recall(approx, exact, np.zeros(4, bool)) == (0.75, None)


def test_build_and_tune_meets_the_target_on_the_served_users_too() -> None:
    """A sample topped up with other users: the knob is raised until the users the index is built for
    (``also``) reach the target by themselves, not only the whole sample, and the recall reported is
    the lower of the two (slow reference)."""
    from recsys_cl.config import IndexConfig
    from recsys_cl.index.build import ItemEmbeddings, build_and_tune

    items, ids, queries = clustered()
    emb = ItemEmbeddings(items, ids, normalized=True)
    cfg = IndexConfig(backend="annoy", k=K, n_trees=2, target_recall=0.95)
    truth = brute_force_topk(items, ids, queries, K)

    def per_query(index: Index) -> np.ndarray:
        got = index.query(queries, K)[0]
        return np.array([len(set(g) & set(t)) / len(t) for g, t in zip(got, truth)])

    whole, whole_fields = build_and_tune(emb, queries, cfg)
    hard = per_query(whole) < 1.0  # the queries the whole-sample knob serves worst
    assert hard.any() and per_query(whole)[hard].mean() < 0.95  # else the test could not fail
    assert whole_fields["recall_at_k"] == whole_fields["recall_at_k_all"] == pytest.approx(per_query(whole).mean())
    assert whole_fields["recall_at_k_active"] is None  # no served users to tell apart
    served, fields = build_and_tune(emb, queries, cfg, also=hard)
    recall = per_query(served)
    assert recall[hard].mean() >= 0.95 and recall.mean() >= 0.95
    assert fields["recall_at_k"] == pytest.approx(min(recall.mean(), recall[hard].mean()))
    # both numbers the target was checked on are kept, not only the lower
    assert fields["recall_at_k_all"] == pytest.approx(recall.mean())
    assert fields["recall_at_k_active"] == pytest.approx(recall[hard].mean())
    assert served.params()["search_k"] > whole.params()["search_k"]
