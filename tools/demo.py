"""`make demo`: the seed scenario on a local cluster, narrated step by step.

Starts a balancer and two nodes (separate processes), plays UA-1 (lands on node-1) and
UA-2 (lands on node-2), relays UA-2's "hello" to UA-1, prints what each node did (from
the routers' own log lines and the clustered state), shows UA-1's call as every process
recorded it (`zeroslee-admin trace`), then stops every process it started.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from zeroslee import admin, hashing
from zeroslee.devcluster import DevCluster
from zeroslee.ua import UserAgent, via_hosts


def call_id_on(node: str, nodes: list[str], who: str) -> str:
    return next(f"{who}-{i}@demo" for i in range(10_000) if hashing.choose(f"{who}-{i}@demo", nodes) == node)


def say(who: str, text: str) -> None:
    print(f"  {who:<16} {text}", flush=True)


def deliveries(cluster: DevCluster, node: str, seen: set[int]) -> list[dict[str, Any]]:
    out = []
    for i, record in enumerate(cluster.log_records("router", node)):
        if record.get("event") == "delivered" and (node, i) not in seen:
            seen.add((node, i))  # type: ignore[arg-type]
            out.append(record)
    return out


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="zeroslee-demo-"))
    cluster = DevCluster(work, base=5060)
    names: dict[str, str] = {}

    def name(ident: str) -> str:
        return names.get(ident, ident)

    print(f"zeroslee demo: balancer on {cluster.balancer_addr[0]}:{cluster.balancer_addr[1]}, nodes node-1 and node-2")
    cluster.start_all()
    seen: set[int] = set()
    ua1 = ua2 = None
    try:
        cluster.wait_ready()
        print("cluster ready (balancer answers OPTIONS 200, both nodes live)\n")
        nodes = cluster.config.node_ids
        ua1 = UserAgent("ua1", 6001, cluster.balancer_addr)
        ua2 = UserAgent("ua2", 6002, cluster.balancer_addr)

        print("1. UA-1 joins room-7; its Call-ID hashes to node-1")
        say("UA-1", "INVITE sip:room-7@chat.example -> balancer")
        say("UA-1", f"<- {ua1.invite('room-7', call_id_on('node-1', nodes, 'ua1')).status} OK, ACK")
        for d in deliveries(cluster, "node-1", seen):
            names[d["created"][0]] = "Sbb-1"
            say(
                "node-1 router",
                f"{d['method']} -> created {name(d['created'][0])} ({d['created'][0]}), commit seq {d['seq']}",
            )
        [room] = [r for r in admin.rows_for(cluster.config, "activities") if "room-7" in r["names"]]
        names[room["id"]] = "ACI-1"
        say(
            "cluster state",
            f"ACI-1 = null activity {room['id']} named 'room-7', owner {room['owner']}, "
            f"attached: {[name(a) for a in room['attachments']]}",
        )

        print("\n2. UA-2 joins room-7; its Call-ID hashes to node-2")
        say("UA-2", f"<- {ua2.invite('room-7', call_id_on('node-2', nodes, 'ua2')).status} OK, ACK")
        for d in deliveries(cluster, "node-2", seen):
            names[d["created"][0]] = "Sbb-2"
            say(
                "node-2 router",
                f"{d['method']} -> created {name(d['created'][0])} ({d['created'][0]}), looked up ACI-1 and attached",
            )

        print('\n3. UA-2 sends INFO "hello" on its dialog (node-2)')
        say("UA-2", f"INFO 'hello' <- {ua2.request('INFO', b'hello').status} OK")
        relayed = ua1.wait_request("INFO")
        for d in deliveries(cluster, "node-2", seen):
            if d.get("event_type") == "SipRequest":
                say(
                    "node-2 router",
                    f"INFO -> {name(d['to'][0])} looked up 'room-7' = ACI-1 and fired a MessageEvent on it",
                )
            else:
                remote = ", ".join(f"{name(s)} (loaded from clustered state)" for s in d["loaded_remote"])
                say(
                    "node-2 router",
                    f"MessageEvent on {name(d['activity'])} delivered to {[name(s) for s in d['to']]}; {remote}",
                )
        print("\n4. Sbb-1 (running on node-2) sends the text on UA-1's dialog through node-2's sip-ra")
        hops = " <- ".join(
            "balancer"
            if h == cluster.balancer_addr
            else ("node-2 sip-ra" if h == cluster.node_addr("node-2") else f"{h[0]}:{h[1]}")
            for h in via_hosts(relayed)
        )
        say("UA-1", f"received INFO {relayed.body.decode()!r}, CSeq {relayed.get('CSeq')}, Via: {hops}")

        print("\n5. Both leave")
        say("UA-1", f"BYE <- {ua1.request('BYE').status} OK")
        say("UA-2", f"BYE <- {ua2.request('BYE').status} OK")
        left = admin.rows_for(cluster.config, "activities")
        say("cluster state", f"{len(left)} activities left (the room ended with its last participant)")

        call1 = ua1.call.call_id if ua1.call is not None else ""
        print(f"\n6. UA-1's call across the cluster: zeroslee-admin trace {call1}")
        admin.print_ladder(call1, admin.trace(cluster.config, call1))
        ok = relayed.body == b"hello" and not left
        print("\ndemo", "passed" if ok else "FAILED", f"(logs: {cluster.logdir})")
        return 0 if ok else 1
    finally:
        for ua in (ua1, ua2):
            if ua is not None:
                ua.close()
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
