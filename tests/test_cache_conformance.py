"""The cache conformance vectors (export/conformance/cache_vectors.py) still describe what ralu_edge.cache does:
replaying every recorded run through the Python cache and samplers gives the recorded decisions, velocities
and final latents (the Kotlin core checks the same folder in CacheReplayTest). numpy only."""

from ralu_export.conformance.cache_vectors import DEFAULT_OUT, RUNS, check_cache_vectors


def test_the_cache_vectors_replay_through_ralu_edge_without_a_difference():
    assert (DEFAULT_OUT / "index.json").is_file(), "regenerate with python -m ralu_export.conformance.cache_vectors"
    assert check_cache_vectors(DEFAULT_OUT) == []


def test_the_vectors_cover_both_caches_in_the_baseline_and_in_ralu():
    modes = {(run.mode, run.cache.split(":")[0]) for run in RUNS}
    assert modes == {(m, c) for m in ("baseline", "flux-7x") for c in ("teacache", "taylorseer")}
