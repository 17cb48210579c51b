"""zeroslee-admin: look into a running cluster through the same config file as the services.

Every subcommand asks over the bus (JSON-able replies): the statestores for clustered
state, the routers and balancer for statistics. Tables by default, JSON with --json.
It holds a key like every member (curve.py): `admin`'s, or the one `--as` names; a
server that does not accept that key makes the subcommand fail at once, saying so.
`keygen NAME` makes a member's key pair; `keygen --cluster` every one the cluster file
expects on this host that is missing (what `make setup` runs).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import zmq
import zmq.auth

from zeroslee import access, bus, curve, keys
from zeroslee.config import Config, load

TIMEOUT_MS = 2000
HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)
_keyrings: dict[tuple[int, str], tuple[Config, curve.Keyring]] = {}
member_in_use = access.ADMIN  # whose key the admin holds (`--as`)


def keyring(config: Config) -> curve.Keyring | None:
    """The admin's keys for `config` (loaded once), None on an insecure cluster. A
    missing or unlisted key ends the command with the reason, before anything is sent."""
    if config.security.insecure:
        return None
    cached = _keyrings.get((id(config), member_in_use))
    if cached is not None and cached[0] is config:
        return cached[1]
    try:
        ring = curve.Keyring(config, member_in_use)
    except curve.SecurityError as exc:
        raise SystemExit(f"zeroslee-admin: {exc}") from None
    _keyrings[(id(config), member_in_use)] = (config, ring)
    return ring


def ask(config: Config, endpoint: str, message: bus.Message) -> bus.Message | None:
    """One request and its reply; None if no reply came in time."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    ring = keyring(config)
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    monitor = None
    if ring is not None:
        ring.dial(sock, endpoint)
        monitor = sock.get_monitor_socket(HANDSHAKE_FAILED)
        poller.register(monitor, zmq.POLLIN)
    sock.connect(endpoint)
    try:
        sock.send(bus.encode(message))
        ready = dict(poller.poll(TIMEOUT_MS))
        if sock in ready:
            return bus.decode(sock.recv())
        if monitor is not None and monitor in ready:
            raise SystemExit(
                f"zeroslee-admin: {endpoint} refused {member_in_use}'s key (is it listed in "
                "[security.public] of the cluster file that process runs with?)"
            )
        return None
    finally:
        if monitor is not None:
            sock.disable_monitor()
            monitor.close()
        sock.close()


def endpoint_of(config: Config, service: str, node: str | None) -> str:
    if service == "balancer":
        return config.balancer.control
    assert node is not None
    n = config.node(node)
    return {"statestore": n.store, "router": n.router, "sip-ra": n.control}[service]


def request_stats(config: Config, service: str, node: str | None = None) -> dict[str, Any]:
    reply = ask(config, endpoint_of(config, service, node), bus.StatsRequest(1))
    return dict(reply.stats) if isinstance(reply, bus.StatsReply) else {}


def query(config: Config, prefix: str) -> list[tuple[str, int, bytes]]:
    """Read `prefix` from the first store that answers (every store holds a full mirror)."""
    for node in config.nodes:
        reply = ask(config, node.store, bus.Query(1, prefix))
        if isinstance(reply, bus.QueryResult):
            return reply.items
    raise SystemExit("no statestore answered")


def query_node(config: Config, node: str, prefix: str) -> list[tuple[str, int, bytes]] | None:
    """One store's replica under `prefix` (None if it does not answer)."""
    reply = ask(config, config.node(node).store, bus.Query(1, prefix))
    return reply.items if isinstance(reply, bus.QueryResult) else None


def decode_record(raw: bytes) -> Any:
    try:
        return msgspec.msgpack.decode(raw)
    except msgspec.DecodeError:
        return raw.decode(errors="replace")


def rows_for(config: Config, what: str) -> list[dict[str, Any]]:
    if what == "services":
        return service_rows(config)
    if what == "names":
        return [{"name": keys.last(k), "activity": raw.decode()} for k, _, raw in query(config, "name/")]
    if what == "entities":
        out = []
        for key, version, raw in query(config, "sbb/"):
            rec = decode_record(raw)
            out.append(
                {
                    "id": keys.last(key),
                    "service": rec["service"],
                    "convergence": rec["convergence"],
                    "created_on": rec["created_on"],
                    "version": version,
                }
            )
        return out
    if what == "activities":
        atts: dict[str, list[str]] = {}
        for key, _, _ in query(config, "att/"):
            _, aci, sbb = keys.parts(key)
            atts.setdefault(aci, []).append(sbb)
        names: dict[str, list[str]] = {}
        for key, _, _ in query(config, "aname/"):
            _, aci, name = keys.parts(key)
            names.setdefault(aci, []).append(name)
        out = []
        timers: dict[str, list[str]] = {}
        for key, _, _ in query(config, "tmr/"):
            _, aci, timer = keys.parts(key)
            timers.setdefault(aci, []).append(timer)
        for key, _, raw in query(config, "aci/"):
            rec = decode_record(raw)
            aci = keys.last(key)
            out.append(
                {
                    "id": aci,
                    "type": rec["type"],
                    "owner": rec["owner"],
                    "attachments": atts.get(aci, []),
                    "names": names.get(aci, []),
                    "timers": timers.get(aci, []),
                }
            )
        return out
    if what == "timers":
        out = []
        for key, _, raw in query(config, "tmr/"):
            rec = decode_record(raw)
            _, aci, timer = keys.parts(key)
            row: dict[str, Any] = {"id": timer, "activity": aci}
            if isinstance(rec, dict):
                row.update({k: rec.get(k) for k in ("owner", "fire_at", "period", "repetitions", "missed") if k in rec})
            out.append(row)
        return out
    if what == "alarms":
        # The processes' own alarms (a failing service, poison, overload, replication)...
        out = []
        sources: list[tuple[str, str | None, str]] = [("balancer", None, "balancer")]
        for node_id in config.node_ids:
            sources += [("router", node_id, node_id), ("statestore", node_id, node_id)]
        for service, of, where in sources:
            stats = request_stats(config, service, of)
            for alarm in json.loads(str(stats.get("alarms", "[]"))):
                alarm.pop("held", None)
                out.append({"node": where, "process": service, **alarm})
        # ... and the ones SBBs raised (ctx.alarms), cluster-wide, from the store.
        for key, _, raw in query(config, keys.ALARMS):
            rec = decode_record(raw)
            if isinstance(rec, dict):
                out.append(
                    {
                        "node": rec.get("node", ""),
                        "process": f"sbb:{rec.get('service', '')}",
                        "source": f"{rec.get('service', '')}:{rec.get('id', keys.last(key))}",
                        "level": rec.get("level", ""),
                        "message": rec.get("message", ""),
                        "raised_at": rec.get("raised_at", 0),
                    }
                )
        return out
    if what == "routing":
        out = []
        for node in config.node_ids:
            stats = request_stats(config, "router", node)
            for key, value in sorted(stats.items()):
                if key.startswith("delivered."):
                    out.append({"node": node, "event_type": key.split(".", 1)[1], "deliveries": value})
        return out
    if what == "stats":
        out = [{"process": "balancer", **request_stats(config, "balancer")}]
        for node in config.node_ids:
            for service in ("sip-ra", "router", "statestore"):
                out.append({"process": f"{node}/{service}", **request_stats(config, service, node)})
        return out
    raise SystemExit(f"unknown subcommand {what}")


def metrics_urls(config: Config) -> list[str]:
    """Every process's /metrics, in the cluster file's order (balancer, witness, then each
    node's statestore, router and sip-ra): what a Prometheus scrape config lists."""
    return [f"http://{hostport}/metrics" for _, _, hostport in config.metrics_endpoints()]


def trace_sources(config: Config) -> list[tuple[str, str]]:
    """(process, control endpoint) of every process that keeps trace records."""
    out = [("balancer", config.balancer.control)]
    for node in config.nodes:
        if node.control:
            out.append((f"{node.id}/sip-ra", node.control))
        out.append((f"{node.id}/router", node.router))
    return out


def trace(config: Config, call_id: str) -> list[dict[str, Any]]:
    """Every process's records of `call_id`, and the routers' records of the SBB entities
    those records name (an SBB of this call run on another node, for another call's
    event, shows where it ran), merged in time order."""
    sources = trace_sources(config)
    seen: set[tuple[float, str, str, str, str]] = set()
    rows: list[dict[str, Any]] = []

    def gather(wanted: list[str], only_routers: bool) -> None:
        for process, endpoint in sources:
            if only_routers and not process.endswith("/router"):
                continue
            reply = ask(config, endpoint, bus.TraceRequest(1, wanted))
            if not isinstance(reply, bus.TraceReply):
                continue
            for _, when, source, destination, what in reply.records:
                key = (when, source, destination, what, process)
                if key not in seen:
                    seen.add(key)
                    rows.append({"time": when, "from": source, "to": destination, "what": what, "at": process})

    gather([call_id], only_routers=False)
    sbbs = sorted({r["to"].rsplit(" ", 1)[1] for r in rows if " sbb " in r["to"]})
    if sbbs:
        gather(sbbs, only_routers=True)
    rows.sort(key=lambda r: r["time"])  # stable: one process's records of one moment keep their order
    return rows


def print_ladder(call_id: str, rows: list[dict[str, Any]]) -> None:
    """One line per record: time, who -> whom, what, and which process recorded it."""
    if not rows:
        print(f"no records of {call_id} (unknown Call-ID, or older than every process's trace ring)")
        return
    left = max(len(r["from"]) for r in rows)
    right = max(len(r["to"]) for r in rows)
    what = max(len(r["what"]) for r in rows)
    print(f"call {call_id}: {len(rows)} records from {len({r['at'] for r in rows})} processes")
    for r in rows:
        stamp = time.strftime("%H:%M:%S", time.localtime(r["time"])) + f".{int(r['time'] * 1e6) % 1_000_000:06d}"
        print(f"{stamp}  {r['from']:>{left}} -> {r['to']:<{right}}  {r['what']:<{what}}  @{r['at']}")


def set_tracer(config: Config, service: str, level: str) -> list[dict[str, Any]]:
    """Set `service`'s trace level on every router; the first to take it also stores it
    (`tracer/<service>`), where a router that starts later finds it."""
    rows, stored = [], False
    for node in config.node_ids:
        reply = ask(config, config.node(node).router, bus.SetTracer(1, service, level, store=not stored))
        if isinstance(reply, bus.Pong):
            rows.append({"node": node, "service": service, "level": level.lower(), "result": "set"})
            stored = True
        elif isinstance(reply, bus.StatsReply):
            raise SystemExit(f"zeroslee-admin: {reply.stats.get('error')}")
        else:
            rows.append({"node": node, "service": service, "level": level.lower(), "result": "no answer"})
    if not stored:
        raise SystemExit("zeroslee-admin: no router answered")
    return rows


def service_rows(config: Config) -> list[dict[str, Any]]:
    """Each deployed service: its state, the code taking new calls, and the code and root
    entities of each generation still running (router/lifecycle.py)."""
    found = [raw for key, _, raw in query(config, keys.SERVICES) if key == keys.SERVICES]
    table = decode_record(found[0]).get("services", {}) if found else {}
    roots: dict[str, int] = {}
    for key, _, _ in query(config, "conv/"):
        roots[keys.parts(key)[1]] = roots.get(keys.parts(key)[1], 0) + 1
    rows = []
    for s in config.services:
        record = table.get(s.name) or {"state": "active", "generation": 0, "classes": {0: s.sbb}, "release": 0}
        current = int(record["generation"])
        generations = {int(g): sbb for g, sbb in record["classes"].items()}
        entities = {g: roots.get(s.name if g == 0 else f"{s.name}@{g}", 0) for g in generations}
        state = record["state"]
        if state == "stopping" and not any(entities.values()):
            state = "inactive"  # the last call ended; a router's sweep records it shortly
        rows.append(
            {
                "name": s.name,
                "state": state,
                "sbb": generations[current],
                "release": record.get("release", 0),
                "generation": current,
                "root_entities": sum(entities.values()),
                "running": ", ".join(f"{g}: {sbb} ({entities[g]})" for g, sbb in sorted(generations.items())),
            }
        )
    return rows


def node_rows(config: Config) -> list[dict[str, Any]]:
    """Each node: live and drained as the balancer sees them, drained as the cluster holds
    it, and what it still owns: activities, timers, journaled events and requests it must
    deliver or send, SIP dialogs its RA owns; and the requests the balancer awaits from it."""
    balancer = request_stats(config, "balancer")
    live = json.loads(str(balancer.get("live", "[]")))
    seen_draining = json.loads(str(balancer.get("draining", "[]")))
    versions = json.loads(str(balancer.get("versions", "{}")))
    held = {keys.last(k) for k, _, _ in query(config, keys.DRAINS)}
    owned: dict[str, dict[str, int]] = {
        n: dict.fromkeys(("activities", "timers", "events", "outgoing", "dialogs"), 0) for n in config.node_ids
    }
    for prefix, what, field in (
        ("aci/", "activities", "owner"),
        ("tmr/", "timers", "owner"),
        ("evt/", "events", "node"),
        ("out/", "outgoing", "node"),
        (keys.ra_data_of("sip"), "dialogs", "owner"),
    ):
        for _, _, raw in query(config, prefix):
            rec = decode_record(raw)
            node = rec.get(field) if isinstance(rec, dict) else None
            if node in owned:
                owned[node][what] += 1
    return [
        {
            "node": n,
            "live": n in live,
            "drained": n in held,
            "balancer_sees_drained": n in seen_draining,
            "version": versions.get(n, ""),
            **owned[n],
            "owns_nothing": not any(owned[n].values()),
        }
        for n in config.node_ids
    ]


def drain(config: Config, node: str | None, draining: bool, wait: float) -> list[dict[str, Any]]:
    """`drain NODE` / `undrain NODE`, through the first router that answers; with `wait`
    (seconds), drain returns once the balancer sees it and the node owns nothing."""
    if node not in config.node_ids:
        raise SystemExit(f"zeroslee-admin: no node {node!r} (nodes: {', '.join(config.node_ids)})")
    for via in [n for n in config.node_ids if n != node] + [node]:
        reply = ask(config, config.node(via).router, bus.SetDrain(1, node, draining))
        if isinstance(reply, bus.StatsReply):
            raise SystemExit(f"zeroslee-admin: {reply.stats.get('error')}")
        if isinstance(reply, bus.Pong):
            break
    else:
        raise SystemExit("zeroslee-admin: no router answered")
    deadline = time.monotonic() + wait
    while True:
        (row,) = [r for r in node_rows(config) if r["node"] == node]
        done = row["balancer_sees_drained"] == draining and (row["owns_nothing"] or not draining)
        if done or time.monotonic() >= deadline:
            break
        time.sleep(0.2)  # polling the cluster's state, bounded by --wait
    if wait and not done:
        raise SystemExit(f"zeroslee-admin: {node} still owns {row} after {wait:g} s")
    return [row]


def change_service(config: Config, action: str | None, name: str | None, sbb: str | None) -> list[dict[str, Any]]:
    """`service activate|deactivate NAME`, `service upgrade NAME --sbb module:Class`.
    An upgrade is checked on every node's router first (the code is there, its State may
    take over the running one's entities); then one router commits the change."""
    if action not in ("activate", "deactivate", "upgrade") or not name:
        raise SystemExit("zeroslee-admin: service activate|deactivate NAME | service upgrade NAME --sbb module:Class")
    if (action == "upgrade") != bool(sbb):
        raise SystemExit("zeroslee-admin: --sbb module:Class goes with upgrade, and only with it")
    if name not in {s.name for s in config.services}:
        raise SystemExit(f"zeroslee-admin: no service {name!r} in the cluster file")
    checked = []
    if action == "upgrade":
        for node in config.node_ids:
            reply = ask(config, config.node(node).router, bus.ServiceChange(1, name, action, sbb or "", check=True))
            if not isinstance(reply, bus.StatsReply):
                raise SystemExit(f"zeroslee-admin: {node}'s router did not answer: the new code is unchecked there")
            if "error" in reply.stats:
                raise SystemExit(f"zeroslee-admin: refused by {node}: {reply.stats['error']}")
            checked.append(node)
    for node in config.node_ids:
        reply = ask(config, config.node(node).router, bus.ServiceChange(1, name, action, sbb or ""))
        if isinstance(reply, bus.StatsReply):
            if "error" in reply.stats:
                raise SystemExit(f"zeroslee-admin: {reply.stats['error']}")
            row = {"service": name, "action": action, "result": reply.stats.get("result"), "by": node}
            return [row | ({"checked_on": ", ".join(checked)} if checked else {})]
    raise SystemExit("zeroslee-admin: no router answered")


def profile(config: Config, action: str, table: str | None, rest: list[str]) -> list[dict[str, Any]]:
    """`profile tables | get TABLE KEY | set TABLE KEY JSON | remove TABLE KEY`."""
    if action == "tables":
        counts: dict[str, int] = {}
        for key, _, _ in query(config, keys.PROFILES):
            counts[keys.parts(key)[1]] = counts.get(keys.parts(key)[1], 0) + 1
        return [{"table": t.name, "schema": t.schema, "rows": counts.get(t.name, 0)} for t in config.profiles]
    if action not in ("get", "set", "remove") or not table or not rest or (action == "set") != (len(rest) == 2):
        raise SystemExit("zeroslee-admin: profile tables | get TABLE KEY | set TABLE KEY JSON | remove TABLE KEY")
    if table not in {t.name for t in config.profiles}:
        raise SystemExit(f"zeroslee-admin: no profile table {table!r} in the cluster file")
    key = rest[0]
    if action == "get":
        found = [raw for k, _, raw in query(config, keys.profile(table, key)) if k == keys.profile(table, key)]
        if not found:
            raise SystemExit(f"zeroslee-admin: no row {key!r} in {table}")
        return [{"table": table, "key": key, **_as_row(decode_record(found[0]))}]
    message = bus.SetProfile(1, table, key, rest[1] if action == "set" else "", remove=action == "remove")
    for node in config.node_ids:
        reply = ask(config, config.node(node).router, message)
        if isinstance(reply, bus.Pong):
            return [{"table": table, "key": key, "result": "removed" if message.remove else "set", "by": node}]
        if isinstance(reply, bus.StatsReply):
            raise SystemExit(f"zeroslee-admin: {reply.stats.get('error')}")
    raise SystemExit("zeroslee-admin: no router answered")


def _as_row(record: Any) -> dict[str, Any]:
    """A profile row as JSON-able fields (msgpack of a Struct decodes as a map or an array)."""
    return dict(record) if isinstance(record, dict) else {"value": record}


def tracer_levels(config: Config) -> list[dict[str, Any]]:
    """Every service's trace level as the cluster holds it (info unless set)."""
    held = {keys.last(k): raw.decode(errors="replace") for k, _, raw in query(config, keys.TRACERS)}
    return [{"service": s.name, "level": held.get(s.name, "info")} for s in config.services]


def end_activity(config: Config, activity: str) -> dict[str, Any]:
    """Ask the owner's router (or any live one) to end `activity`."""
    owner = next((r["owner"] for r in rows_for(config, "activities") if r["id"] == activity), None)
    if owner is None:
        raise SystemExit(f"no activity {activity}")
    for node in [owner] + [n for n in config.node_ids if n != owner]:
        if isinstance(ask(config, config.node(node).router, bus.EndActivity(1, activity)), bus.Pong):
            return {"activity": activity, "ended_by": node}
    raise SystemExit("no router answered")


def print_table(rows: list[dict[str, Any]]) -> None:
    if not rows:
        print("(none)")
        return
    columns = list(dict.fromkeys(k for row in rows for k in row))
    cells = [[str(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))


def keygen(config: Config, member: str | None, everyone: bool, directory: str | None) -> list[dict[str, Any]]:
    """Make one member's key pair (or, with `everyone`, every missing one the cluster file
    expects here); rows of what was made, with the line to list in [security.public]."""
    if everyone:
        made = curve.create_missing_keys(config)
        return [{"member": m, "public": str(curve.secret_path(config, m).with_suffix(".key"))} for m in made]
    assert member is not None
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", member):
        raise SystemExit(f"zeroslee-admin: {member!r} cannot be a member name (letters, digits, '.', '_', '-')")
    try:
        public, secret = curve.create_keys(Path(directory or config.security.keys), member)
    except curve.SecurityError as exc:
        raise SystemExit(f"zeroslee-admin: {exc}") from None
    key, _ = zmq.auth.load_certificate(public)
    return [{"member": member, "secret": str(secret), "list": f'{member} = "{key.decode()}"'}]


def main(argv: list[str] | None = None) -> int:
    """The command line; output cut short by its reader (`| head`) ends it quietly."""
    try:
        return run(argv)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes at exit
        return 0


def run(argv: list[str] | None) -> int:
    global member_in_use
    parser = argparse.ArgumentParser(prog="zeroslee-admin")
    parser.add_argument("--config", default=None)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--as", dest="member", default=access.ADMIN, help="whose key to use (default admin)")
    parser.add_argument(
        "what",
        choices=[
            "services",
            "activities",
            "entities",
            "names",
            "timers",
            "alarms",
            "routing",
            "stats",
            "end-activity",
            "keygen",
            "metrics",
            "trace",
            "tracer",
            "profile",
            "service",
            "drain",
            "undrain",
            "nodes",
        ],
    )
    parser.add_argument(
        "id",
        nargs="?",
        help="the activity id (end-activity), the member's name (keygen), the Call-ID (trace), the node "
        "(drain, undrain), activate|deactivate|upgrade (service)",
    )
    parser.add_argument(
        "value",
        nargs="?",
        help="the trace level (tracer SERVICE LEVEL): off, severe ... finest; the service (service ACTION NAME)",
    )
    parser.add_argument("more", nargs="*", help="profile: KEY [JSON]")
    parser.add_argument("--all", action="store_true", help="activities: also the services' and profile tables'")
    parser.add_argument("--sbb", default=None, help="service upgrade: the new version's module:Class")
    parser.add_argument("--wait", type=float, default=0.0, help="drain: wait up to this many s until it owns nothing")
    parser.add_argument("--cluster", action="store_true", help="keygen: every missing key of the cluster file")
    parser.add_argument("--dir", default=None, help="keygen: where to write (default [security] keys)")
    args = parser.parse_args(argv)
    config = load(args.config)
    member_in_use = args.member
    if args.what == "keygen":
        if not args.id and not args.cluster:
            parser.error("keygen needs a member name, or --cluster")
        rows = keygen(config, args.id, args.cluster, args.dir)
        if not rows:
            return 0  # every key was there already: nothing to say
    elif args.what == "metrics":
        urls = metrics_urls(config)
        if args.json:
            json.dump(urls, sys.stdout, indent=2)
            print()
        else:
            print("\n".join(urls))
        return 0
    elif args.what == "trace":
        if not args.id:
            parser.error("trace needs a Call-ID")
        rows = trace(config, args.id)
        if not args.json:
            print_ladder(args.id, rows)
            return 0
    elif args.what == "profile":
        if not args.id:
            parser.error("profile tables | get TABLE KEY | set TABLE KEY JSON | remove TABLE KEY")
        rows = profile(config, args.id, args.value, args.more)
    elif args.what in ("drain", "undrain"):
        rows = drain(config, args.id, args.what == "drain", args.wait)
    elif args.what == "nodes":
        rows = node_rows(config)
    elif args.what == "service":
        rows = change_service(config, args.id, args.value, args.sbb)
    elif args.what == "tracer":
        if args.id and not args.value:
            parser.error("tracer needs SERVICE LEVEL (or nothing, to list the levels)")
        rows = set_tracer(config, args.id, args.value) if args.id else tracer_levels(config)
    elif args.what == "end-activity":
        if not args.id:
            parser.error("end-activity needs an activity id")
        rows = [end_activity(config, args.id)]
    else:
        rows = rows_for(config, args.what)
        if args.what == "activities" and not args.all:  # a profile table's, a service's: the system's
            rows = [r for r in rows if r["type"] not in ("profile", "service")]
    if args.json:
        json.dump(rows, sys.stdout, indent=2, default=str)
        print()
    else:
        print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
