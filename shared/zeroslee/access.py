"""Who may talk to whom on the bus: the cluster's access policy, with no I/O.

Every member of a cluster has one CURVE key pair and one role, given by its name in the
cluster file: a node id is a node (its statestore, router and SIP RA share the node's
key), `balancer` and `witness` are themselves, and `admin` or `admin-<who>` is an
operator. Every socket that binds serves one *domain*, named after what it is for.

The policy is enforced twice (curve.py does the enforcing):

1. At the handshake, by the ZAP handler of the process that binds: a connection is
   accepted only from a listed key whose member `may_connect` to that domain. Anything
   else gets no answer at all, not even an error it could learn from.
2. Per message, on the sockets that serve more than one role: the member the handshake
   authenticated (ZeroMQ's User-Id) may send only what its role `may_send` there. An
   operator reads a store; it does not commit to one. The witness watches that a store's
   process lives (a connection it never writes on); it never replicates.
"""

from __future__ import annotations

from collections.abc import Iterable

NODE, BALANCER, WITNESS, ADMIN = "node", "balancer", "witness", "admin"

# The domains: which socket of which process.
STORE = "store"  # a node's statestore, for the node's own clients (router, SIP RA)
PEER = "peer"  # a node's statestore, for the other stores (replication, votes)
ROUTER = "router"  # a node's event router, for the node's SIP RA
HEARTBEAT = "heartbeat"  # a node's liveness beacon (PUB)
CONTROL = "control"  # a node's SIP RA management socket
FRONT_CONTROL = "front-control"  # the balancer's management socket
WITNESS_VOTE = "witness"  # the witness's votes and leases

ANY = None  # may send every message type the socket's own code accepts

# (domain, role) -> the message types that role may send there; absent: none at all.
SENDS: dict[tuple[str, str], frozenset[str] | None] = {
    (STORE, NODE): ANY,
    (STORE, ADMIN): frozenset({"Query", "Ping", "StatsRequest"}),
    (PEER, NODE): ANY,
    (PEER, WITNESS): frozenset(),
    (ROUTER, NODE): ANY,
    (ROUTER, ADMIN): frozenset(
        {"StatsRequest", "Ping", "EndActivity", "TraceRequest", "SetTracer", "SetProfile", "ServiceChange", "SetDrain"}
    ),
    (WITNESS_VOTE, NODE): ANY,
    (WITNESS_VOTE, ADMIN): frozenset({"Ping"}),
    (CONTROL, ADMIN): ANY,
    (FRONT_CONTROL, ADMIN): ANY,
    (HEARTBEAT, NODE): frozenset(),
    (HEARTBEAT, BALANCER): frozenset(),
    (HEARTBEAT, WITNESS): frozenset(),
    (HEARTBEAT, ADMIN): frozenset(),
}
# Domains whose only members are the node that binds them (its own processes) or other
# roles: another node never reaches a node's store, router or control socket.
OWN_NODE_ONLY = frozenset({STORE, ROUTER})


def role_of(member: str, node_ids: Iterable[str]) -> str | None:
    """The role a member's name gives it; None for a name that is no member's."""
    if member in node_ids:
        return NODE
    if member in (BALANCER, WITNESS):
        return member
    if member == ADMIN or member.startswith(ADMIN + "-"):
        return ADMIN
    return None


def may_connect(domain: str, owner: str, member: str, role: str | None) -> bool:
    """Whether `member` (of `role`) may connect to `owner`'s socket of `domain`."""
    if role is None or (domain, role) not in SENDS:
        return False
    if role == NODE and domain in OWN_NODE_ONLY:
        return member == owner
    if role == NODE and domain == PEER:
        return member != owner  # a store replicates with the others, not with itself
    return True


def may_send(domain: str, role: str | None, message_type: str) -> bool:
    """Whether a member of `role` may send a message of `message_type` (its class name)
    on a socket of `domain`. Checked after the handshake, on sockets with mixed roles."""
    if role is None or (domain, role) not in SENDS:
        return False
    allowed = SENDS[(domain, role)]
    return allowed is ANY or message_type in allowed


class Endpoints:
    """Which member binds each bus endpoint of a cluster, and which domain it serves
    there: what a client needs to know whose server key to expect."""

    def __init__(
        self,
        nodes: Iterable[tuple[str, dict[str, str]]],
        front_control: str,
        witness: str,
    ) -> None:
        self.owner: dict[str, tuple[str, str]] = {}
        for node, endpoints in nodes:
            for domain, endpoint in endpoints.items():
                if endpoint:
                    self.owner[endpoint] = (node, domain)
        self.owner[front_control] = (BALANCER, FRONT_CONTROL)
        if witness:
            self.owner[witness] = (WITNESS, WITNESS_VOTE)

    def of(self, endpoint: str) -> tuple[str, str] | None:
        """(owner, domain) of `endpoint`, or None if no member of the cluster binds it."""
        return self.owner.get(endpoint)
