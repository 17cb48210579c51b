"""The SBB programming model: what a service developer writes against.

An SBB is a class with a typed persistent `State` (a msgspec Struct: JAIN SLEE's CMP
fields), a `priority`, and handlers declared with `@on(EventType, ...)`. A handler that
names `initial_by` is an initial event handler: the function maps the event to a
convergence name, and the container creates (or reuses) the root entity for that name.
Handlers get the event and an `SbbContext`; all they do through the context (naming,
attach, fire, SIP) takes effect when the delivery commits, never before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar, Protocol
from urllib.parse import unquote

import msgspec

from zeroslee import bus
from zeroslee.sipmsg import ParseError, SipMessage, parse


@lru_cache(maxsize=64)
def _head(raw: bytes) -> SipMessage:
    """A message's start line and headers, parsed when a handler first reads a header
    (most read none: the hot path never parses twice)."""
    try:
        return parse(raw + b"\r\n\r\n")
    except ParseError:  # the RA parsed it already; a made-up response has no headers
        return SipMessage()


class HeaderAccess:
    """Any header of the message as received, by its full or compact name (`i` for
    Call-ID), case-insensitively; `header_values` splits comma lists (Via, Route,
    Allow, Supported...)."""

    headers: bytes

    def header(self, name: str) -> str | None:
        """The first value of header `name`, or None."""
        return _head(self.headers).get(name)

    def header_values(self, name: str) -> list[str]:
        """Every value of header `name`, over all its lines, comma lists split."""
        return _head(self.headers).get_all(name)

    def header_names(self) -> list[str]:
        """The headers present, in order, each once (canonical names)."""
        return list(dict.fromkeys(name for name, _ in _head(self.headers).headers))


class SipRequest(bus.RequestReceived, HeaderAccess, frozen=True, tag=True):
    """A SIP request event, as the SIP RA fires it on its activity."""

    @property
    def user(self) -> str:
        """The Request-URI's user part, %HH escapes decoded once (`sip:room%2D7@h` -> `room-7`;
        RFC 4475 §3.1.1.3: never recursively)."""
        rest = self.request_uri.split(":", 1)[-1]
        raw = rest.rpartition("@")[0].split(";", 1)[0] if "@" in rest else ""
        return unquote(raw, errors="surrogateescape")


class SipResponse(bus.ResponseReceived, HeaderAccess, frozen=True, tag=True):
    """A response to a request an SBB sent: final (408 if none came, 503 if it could not
    be sent), or provisional (101-199) to an INVITE."""


class ActivityEndEvent(msgspec.Struct, frozen=True):
    activity: str


class TimerEvent(msgspec.Struct, frozen=True):
    """Fired on its activity when a timer set with `ctx.set_timer` expires."""

    timer_id: str
    activity: str
    fire_at: float  # cluster time (seconds since the epoch)


class ProfileUpdatedEvent(msgspec.Struct, frozen=True):
    """A row of a profile table was written or removed (`zeroslee-admin profile`); fired
    on the table's activity, to the SBBs that `ctx.profiles.watch(table)`."""

    table: str
    key: str
    removed: bool = False


class ServiceStartedEvent(msgspec.Struct, frozen=True):
    """The service became active (`zeroslee-admin service activate`, or an upgrade made
    `generation` current): fired on the service's activity, delivered to its own SBBs
    only (an initial handler for it creates a root entity, as any initial event does)."""

    service: str
    generation: int = 0


class SleeError(Exception):
    """A facility refused an operation; the delivery rolls back unless caught."""


class NameAlreadyBound(SleeError):
    pass


class NameNotBound(SleeError):
    pass


class FacilityError(SleeError):
    pass


class HandlerFailed(SleeError):
    """Service code raised (a handler, a lifecycle hook, an `initial_by` selector, its
    State's constructor or decoding): the delivery rolls back. `hook` says whether the
    SBB's `rolled_back` then runs (JAIN SLEE sbbRolledBack): after a handler, yes; after
    a failed `created()`, selector or decode there is no entity to tell."""

    def __init__(
        self, sbb_id: str, error: BaseException, service: str = "", hook: bool = True, requested: bool = False
    ) -> None:
        super().__init__(f"{sbb_id}: {type(error).__name__}: {error}")
        self.sbb_id = sbb_id
        self.error = error
        self.service = service
        self.hook = hook
        self.requested = requested  # the SBB asked for it (`set_rollback_only`): not a failure


class RollbackRequested(Exception):
    """What `HandlerFailed.error` is when a handler called `ctx.set_rollback_only()`."""


class ActivityEnding(SleeError):
    """No new events may be fired on an activity that is ending or gone."""


@dataclass(frozen=True)
class Convergence:
    """JAIN SLEE 1.1's initial-event-select variables (§8.6), declared rather than
    computed: `@on(SipRequest, "INVITE", initial_by=Convergence(address=True))` gives one
    root entity per caller. The convergence name is made of the variables selected:
    - `activity_context`: the activity the event was fired on;
    - `address`: the event's default address: a SIP request's From URI, or the `address`
      field of a custom event; an event with none selects no entity for this service;
    - `event_type`: the event's type;
    - `event`: the event itself: every event gets a root entity of its own (a SIP
      request's `event_id`, so a delivery run again after a conflict finds the same one).
    `address_profile` needs the profile facility, which zeroslee does not have yet: it is
    refused where the SBB is declared, not at the first event."""

    activity_context: bool = False
    address: bool = False
    event_type: bool = False
    event: bool = False
    address_profile: bool = False

    def __post_init__(self) -> None:
        if self.address_profile:
            raise ValueError("Convergence(address_profile=True) needs the profile facility, not available")
        if not (self.activity_context or self.address or self.event_type or self.event):
            raise ValueError("Convergence() selects no variable: name at least one")

    def name(self, event: object, activity: str, unique: Callable[[], str]) -> str | None:
        parts = []
        if self.activity_context:
            parts.append(f"aci={activity}")
        if self.address:
            address = event.from_uri if isinstance(event, SipRequest) else getattr(event, "address", "")
            if not isinstance(address, str) or not address:
                return None
            parts.append(f"address={address}")
        if self.event_type:
            parts.append(f"type={type(event).__module__}:{type(event).__qualname__}")
        if self.event:
            parts.append(f"event={getattr(event, 'event_id', '') or unique()}")
        return "|".join(parts)


InitialBy = Callable[[Any], str | None] | Convergence


@dataclass(frozen=True)
class Handler:
    event_type: type
    method: str | None
    initial_by: InitialBy | None
    function: Callable[..., None]


def on(
    event_type: type, method: str | None = None, initial_by: InitialBy | None = None
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Declare an event handler; `method` filters SIP requests by method."""

    def mark(function: Callable[..., None]) -> Callable[..., None]:
        function.__zeroslee_handler__ = Handler(event_type, method, initial_by, function)  # type: ignore[attr-defined]
        return function

    return mark


class SbbContext(Protocol):
    """What a handler may do; implemented by the container's transaction."""

    sbb_id: str
    activity: str

    def lookup(self, name: str) -> str | None: ...
    def bind(self, name: str, activity: str) -> None: ...
    def unbind(self, name: str) -> None: ...
    def create_null_activity(self) -> str: ...
    def attach(self, activity: str) -> None: ...
    def detach(self, activity: str) -> None: ...
    def attachment_count(self, activity: str) -> int: ...
    def has_attachments(self, activity: str) -> bool: ...
    def fire(self, activity: str, event: msgspec.Struct) -> None: ...
    def set_rollback_only(self) -> None: ...
    def create_child(self, relation: str) -> str: ...
    def children(self, relation: str | None = None) -> list[str]: ...
    def remove_child(self, child_id: str) -> None: ...
    def attach_child(self, child_id: str, activity: str, mask: tuple[str, ...] = ()) -> None: ...
    @property
    def tracer(self) -> Any: ...
    @property
    def usage(self) -> Any: ...
    @property
    def alarms(self) -> Any: ...
    @property
    def profiles(self) -> Any: ...
    def respond(
        self,
        event: SipRequest,
        status: int,
        reason: str = "",
        body: bytes = b"",
        content_type: str = "",
        headers: Sequence[tuple[str, str]] = (),
    ) -> None: ...
    def send_request(
        self,
        dialog: str,
        method: str,
        body: bytes = b"",
        content_type: str = "",
        headers: Sequence[tuple[str, str]] = (),
    ) -> None: ...
    def create_dialog(self) -> str: ...
    def invite(
        self,
        dialog: str,
        from_uri: str,
        to_uri: str,
        body: bytes = b"",
        content_type: str = "",
        headers: Sequence[tuple[str, str]] = (),
    ) -> None: ...
    def send_initial(
        self,
        activity: str,
        method: str,
        from_uri: str,
        to_uri: str,
        body: bytes = b"",
        content_type: str = "",
        headers: Sequence[tuple[str, str]] = (),
    ) -> None: ...
    def cancel(self, dialog: str, headers: Sequence[tuple[str, str]] = ()) -> None: ...
    def defer(self, event: SipRequest) -> None: ...
    def set_timer(self, activity: str, delay: float) -> str: ...
    def cancel_timer(self, activity: str, timer_id: str) -> None: ...
    @property
    def options(self) -> dict[str, str]: ...


@dataclass(frozen=True)
class ChildRelation:
    """A child relation (JAIN SLEE's getChildRelation): the child SBB's class, and the
    priority its entities' attachments get (higher first, as for root SBBs)."""

    sbb: type[Sbb]
    priority: int = 0


class Sbb:
    """Base class of every SBB. Subclasses set `State` and declare handlers with `@on`."""

    State: ClassVar[type[msgspec.Struct]] = msgspec.Struct
    priority: ClassVar[int] = 0
    handlers: ClassVar[list[Handler]] = []
    # Custom events this SBB fires but has no handler for; every type a handler takes
    # is declared already. The router decodes journaled events as these types only.
    event_types: ClassVar[tuple[type[msgspec.Struct], ...]] = ()
    # Child relations by name: `ctx.create_child("leg")` makes an entity of that class.
    child_relations: ClassVar[dict[str, ChildRelation]] = {}
    # Usage parameters (router/usage.py) this service's SBBs update through `ctx.usage`.
    usage_counters: ClassVar[tuple[str, ...]] = ()
    usage_samples: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        found: dict[str, object] = {}  # a subclass (a new version) inherits its base's handlers
        for klass in reversed(cls.__mro__):
            found.update(vars(klass))
        cls.handlers = [
            h for value in found.values() if (h := getattr(value, "__zeroslee_handler__", None)) is not None
        ]

    def __init__(self, state: msgspec.Struct) -> None:
        self.state = state

    # lifecycle hooks (JAIN SLEE sbbCreate / sbbRemove / sbbRolledBack)
    def created(self, ctx: SbbContext) -> None:
        pass

    def removed(self, ctx: SbbContext) -> None:
        pass

    def rolled_back(self, ctx: SbbContext, error: BaseException) -> None:
        pass

    def exception_thrown(self, ctx: SbbContext, error: BaseException, event: object) -> None:
        """JAIN SLEE sbbExceptionThrown: a handler of this SBB raised `error` for `event`.
        Called at once, inside the delivery that is rolling back, so what it does through
        `ctx` is rolled back too: it is for telling (a log line, a usage count in memory);
        `rolled_back` follows in a transaction of its own. If it raises, that is counted
        and logged with the handler's failure, and changes nothing."""

    @classmethod
    def declared_event_types(cls, seen: set[type] | None = None) -> list[type]:
        """Its own and its children's (recursively): what the router may decode for it."""
        seen = set() if seen is None else seen
        if cls in seen:
            return []
        seen.add(cls)
        types: list[type] = [*cls.event_types, *(h.event_type for h in cls.handlers)]
        for relation in cls.child_relations.values():
            types += relation.sbb.declared_event_types(seen)
        return types

    @classmethod
    def handler_for(cls, event: object) -> Handler | None:
        for h in cls.handlers:
            if isinstance(event, h.event_type) and (h.method is None or getattr(event, "method", None) == h.method):
                return h
        return None
