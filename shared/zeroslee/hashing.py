"""Rendezvous (highest random weight) hashing: the one pure function every balancer and
every test uses to map a key (a Call-ID, an entity id) onto the live nodes.

All balancers agree without talking: the choice depends only on the key and the set of
live nodes. When a node dies only its keys move, spread over the survivors.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def weight(node: str, key: str) -> int:
    digest = hashlib.blake2b(f"{node}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def choose(key: str, nodes: Iterable[str]) -> str | None:
    """The node `key` belongs to among `nodes`, or None if there is none."""
    return max(nodes, key=lambda node: (weight(node, key), node), default=None)
