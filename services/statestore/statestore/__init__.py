"""The node's replicated LMDB state store (see README.md beside this package)."""
