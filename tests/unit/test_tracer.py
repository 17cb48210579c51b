"""The trace facility (router/tracer.py): levels as JAIN SLEE orders them, per service."""

from __future__ import annotations

import pytest

from router.container import Container, Service
from router.context import Context
from router.records import Transaction
from router.tracer import LEVELS, Tracer, parse_level
from tests.unit.test_container import Run, null_with, probe_service


def lines(levels: dict[str, str], service: str = "chat") -> list[str]:
    out: list[str] = []
    tracer = Tracer(service, "s1", levels, lambda svc, sbb, level, message, fields: out.append(f"{level}:{message}"))
    for level in LEVELS[1:]:
        tracer.trace(level, level)
    return out


def test_a_tracer_emits_its_level_and_every_more_severe_one() -> None:
    assert lines({"chat": "warning"}) == ["severe:severe", "warning:warning"]
    assert lines({"chat": "finest"}) == [f"{lv}:{lv}" for lv in LEVELS[1:]]


def test_the_default_level_is_info_and_off_emits_nothing() -> None:
    assert lines({}) == ["severe:severe", "warning:warning", "info:info"]
    assert lines({"chat": "off"}) == []
    assert lines({"other": "finest"}) == ["severe:severe", "warning:warning", "info:info"]  # per service


def test_levels_parse_in_any_case_and_unknown_ones_are_refused() -> None:
    assert parse_level(" FINE ") == "fine"
    with pytest.raises(ValueError, match="one of off, severe"):
        parse_level("loud")


def test_ctx_tracer_uses_the_routers_level_for_its_service_live() -> None:
    run = Run()
    _, activity = null_with(run)
    container = Container("node-1", [Service("probe", probe_service("probe"))])
    seen: list[tuple[str, str, str]] = []
    container.trace_sink = lambda service, sbb, level, message, fields: seen.append((service, level, message))
    ctx = Context(Transaction(run.view, "node-1"), "s1", activity, container, container.services[0])
    ctx.tracer.fine("hidden")
    container.trace_levels["probe"] = "fine"  # what SetTracer does, between two deliveries
    ctx.tracer.fine("shown", n=1)
    assert seen == [("probe", "fine", "shown")]


def test_a_field_named_like_the_lines_own_keys_is_renamed_and_a_failing_sink_costs_only_the_line() -> None:
    got: list[dict[str, object]] = []
    tracer = Tracer("chat", "s1", {}, lambda svc, sbb, level, message, fields: got.append(fields))
    tracer.info("x", event="e", level="l", room="r")
    assert got == [{"field_event": "e", "field_level": "l", "room": "r"}]

    def broken(*args: object) -> None:
        raise TypeError("cannot write that")

    failing = Tracer("chat", "s1", {}, broken)
    failing.info("x", value=object())  # no exception reaches the handler
    assert failing.lost == 1
