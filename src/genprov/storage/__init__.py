"""On-disk formats: sharded, resumable feature stores, their JSON manifests, and feature indexes.

Example:
    >>> from genprov.storage import FeatureStore
    >>> store = FeatureStore.create("runs/feats", n_rows=1000, arrays={"features": 2048}, spec={"seed": 0})  # doctest: +SKIP
    >>> store.missing_shards()  # doctest: +SKIP
    [0]

This package sits beside ``genprov.models``: it imports only ``genprov.data`` and the layers below.
"""

from genprov.storage.feature_store import STORE_DTYPES, FeatureStore, read_raw_features
from genprov.storage.index import (
    FAISS_KINDS,
    INDEX_FILE,
    METRICS,
    FeatureIndex,
    exact_scores,
    exact_search,
    import_faiss,
    normalize_rows,
)
from genprov.storage.manifest import (
    MANIFEST_FILE,
    Manifest,
    check_spec,
    fingerprint_state,
    read_manifest,
    spec_differences,
    write_manifest,
)

__all__ = [
    "FAISS_KINDS",
    "INDEX_FILE",
    "MANIFEST_FILE",
    "METRICS",
    "STORE_DTYPES",
    "FeatureIndex",
    "FeatureStore",
    "Manifest",
    "check_spec",
    "exact_scores",
    "exact_search",
    "fingerprint_state",
    "import_faiss",
    "normalize_rows",
    "read_manifest",
    "read_raw_features",
    "spec_differences",
    "write_manifest",
]
