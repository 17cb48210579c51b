"""Keys cannot be forged: whatever a name, Request-URI user, Call-ID or tag holds, each
key part maps back one to one and never addresses, or prefixes, another record."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from router.chat import ChatSbb
from router.container import Container, Service, Transaction
from tests.unit.test_container import DictView, sip
from zeroslee import keys

# Any text a peer can make us hold: `/`, `%2F`, NUL, controls, very long, and lone
# surrogates (how non-UTF-8 octets of a Request-URI user reach us, surrogateescape).
HOSTILE = st.text(alphabet=st.characters(codec=None), max_size=300) | st.sampled_from(
    ["a/b", "a%2Fb", "%", "%25", "/", "", "\x00", "x" * 5000, "\udcff\udc80", "\ud800", "name/room-1"]
)


@given(HOSTILE)
def test_a_key_part_holds_no_separator_and_maps_back(text: str) -> None:
    escaped = keys.part(text)
    assert keys.SEP not in escaped
    escaped.encode("utf-8")  # storable as an LMDB key: never a UnicodeEncodeError
    assert keys.parts(keys.name(text)) == ["name", text]
    assert keys.last(keys.activity_name("n1", text)) == text


@given(HOSTILE, HOSTILE)
def test_distinct_parts_make_distinct_keys_and_no_prefix_captures_another(a: str, b: str) -> None:
    if a != b:
        assert keys.name(a) != keys.name(b)
        assert not keys.attachment(b, "s1").startswith(keys.attachments_of(a))
        assert not keys.timer(b, "t1").startswith(keys.timers_of(a))


def test_a_room_named_with_an_escaped_slash_cannot_touch_another_room() -> None:
    """Request-URI user `a%2Fb` is the room "a/b". Ending it must not unbind room "b", nor
    its attachments be read as another activity's."""
    view = DictView()
    container = Container("node-1", [Service("chat", ChatSbb)])

    def deliver(method: str, dialog: str, room: str) -> Transaction:
        tx = Transaction(view, "node-1")
        container.deliver(tx, sip(method, dialog, room=room, created=method == "INVITE"), dialog)
        view.apply(tx, len(view.data) + 1)
        return tx

    deliver("INVITE", "d1", "b")
    deliver("INVITE", "d2", "a%2Fb")
    assert {keys.last(k) for k in view.data if k.startswith("name/")} == {"b", "a/b"}
    deliver("BYE", "d2", "a%2Fb")
    assert [keys.last(k) for k in view.data if k.startswith("name/")] == ["b"]
    room_b = view.get(keys.name("b"))[1]
    assert room_b is not None and view.scan(keys.attachments_of(room_b.decode()))
