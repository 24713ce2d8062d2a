"""The data: the catalog (what is known about each track) and the vector store (what it sounds like).

Everything else reads and writes through `Catalog` and `VectorStore` methods: no SQL, no Milvus call and no
lock of theirs outside this package.
"""
from sidecar.data.catalog import Catalog
from sidecar.data.store import StoreError, VectorStore

__all__ = ["Catalog", "StoreError", "VectorStore"]
