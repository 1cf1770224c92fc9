"""A bounded fuzz pass (hypothesis, derandomized so CI sees the same examples each run) over
what untrusted input reaches first: the WebSocket message parser, the identifier and topic
grammar, the frames built from them, SSE cursors, audit entries and webhook addresses.

The oracles are independent of the code under test: a character set, not the module's regex;
a JSON parser, not the frame builder's assumptions."""

from __future__ import annotations

import base64
import ipaddress
import json
import string
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ratewire.audit.entry import AuditContext, AuditRecord, storable
from ratewire.domain import is_identifier, parse_topic, validate_identifier
from ratewire.realtime import frames
from ratewire.realtime.messages import BadMessage, decode
from ratewire.realtime.sse import BadLastEventId, decode_event_id
from ratewire.webhooks.addresses import refusal

BUDGET = settings(
    max_examples=400,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
IDENTIFIER_CHARS = set(string.ascii_letters + string.digits + "_-")
PREFIXES = ["rating.game.", "rating.user.", "rating.global", "rating.game.*", ""]

# Text an attacker may send: any code point, lone surrogates included, with the characters
# that broke things (newlines, quotes, backslashes) made likely.
hostile_text = st.text(
    alphabet=st.characters(codec=None) | st.sampled_from(["\n", "\r", '"', "\\", "\udfff", "\x00"]),
    max_size=80,
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | hostile_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(hostile_text, inner, max_size=3),
    max_leaves=10,
)


def an_identifier_by_spec(value: str) -> bool:
    return 1 <= len(value) <= 64 and all(c in IDENTIFIER_CHARS for c in value)


@BUDGET
@given(st.one_of(hostile_text, st.text(alphabet=[*sorted(IDENTIFIER_CHARS), "\n"], max_size=70)))
def test_identifiers_are_exactly_the_documented_grammar(value: str) -> None:
    assert is_identifier(value) == an_identifier_by_spec(value)
    try:
        validate_identifier(value, "gameId")
    except ValueError as refused:
        assert "gameId" in str(refused)
        assert not an_identifier_by_spec(value)
    else:
        assert an_identifier_by_spec(value)


@BUDGET
@given(st.sampled_from(PREFIXES), hostile_text)
def test_topics_parse_only_when_their_key_is_an_identifier_and_round_trip(
    prefix: str, key: str
) -> None:
    name = prefix + key
    topic = parse_topic(name)
    if topic is None:
        return
    assert topic.name == name
    if topic.key:
        assert an_identifier_by_spec(topic.key)


@BUDGET
@given(hostile_text, st.integers(min_value=0, max_value=2**63 - 1), hostile_text)
def test_rating_update_frames_are_json_whatever_the_topic(
    topic: str, offset: int, kind: str
) -> None:
    try:
        frame = frames.rating_update(topic, offset, kind, b'{"score":3}')
    except TypeError:  # orjson refuses lone surrogates: never a broken frame
        assert any(0xD800 <= ord(c) <= 0xDFFF for c in topic + kind)
        return
    decoded = json.loads(frame)
    assert (decoded["topic"], decoded["offset"], decoded["event"]) == (topic, offset, kind)


messages = st.fixed_dictionaries(
    {"action": st.sampled_from(["auth", "subscribe", "ping", "refresh"]) | json_values},
    optional={"topic": json_values, "since": json_values, "id": json_values, "epoch": json_values},
)
nested = st.integers(min_value=1, max_value=3000).map(
    lambda depth: '{"action":"ping","id":' + "[" * depth + "]" * depth + "}"
)


@BUDGET
@given(
    st.one_of(
        messages.map(json.dumps),
        json_values.map(json.dumps),
        nested,
        st.binary(max_size=120).map(lambda raw: raw.decode("latin-1")),
    )
)
def test_the_message_parser_answers_every_input_with_a_message_or_bad_message(
    payload: str,
) -> None:
    raw = payload.encode("utf-8", "surrogatepass")
    try:
        message = decode(raw)
    except BadMessage:
        return
    # Whatever it accepts, the reply can carry back: the id echoes, the offset fits 64 bits.
    orjson.loads(frames.control("pong", message.id))
    orjson.loads(frames.error("bad_request", "x", message.id))
    assert message.since is None or 0 <= message.since < 2**63


@BUDGET
@given(hostile_text, st.lists(st.tuples(st.sampled_from(PREFIXES), hostile_text), max_size=3))
def test_sse_cursors_decode_to_known_topics_and_64_bit_offsets_or_are_refused(
    epoch: str, pairs: list[tuple[str, str]]
) -> None:
    text = "|".join(["1", epoch, *(f"{p}={o}" for p, o in pairs)])
    cursor = base64.urlsafe_b64encode(text.encode("utf-8", "surrogatepass")).decode()
    try:
        _, positions = decode_event_id(cursor.rstrip("="))
    except BadLastEventId:
        return
    for topic, offset in positions.items():
        assert parse_topic(topic) is not None
        assert 0 <= offset < 2**63


@BUDGET
@given(hostile_text, st.dictionaries(hostile_text, json_values, max_size=4))
def test_audit_records_from_untrusted_claims_are_always_storable(
    actor: str, detail: dict[str, Any]
) -> None:
    record = AuditRecord.now("auth.refused", AuditContext(actor=actor), **{"claims": detail})
    safe = storable(record)
    orjson.loads(safe.detail_json())
    assert safe.context.actor is not None
    safe.context.actor.encode()  # no lone surrogate left
    if not any(0xD800 <= ord(c) <= 0xDFFF for c in actor):
        assert safe.context.actor == actor  # text that can be kept is kept as it is


@BUDGET
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_every_ipv6_form_of_a_refused_ipv4_address_is_refused(value: int) -> None:
    inner = ipaddress.IPv4Address(value)
    mapped = ipaddress.IPv6Address((0xFFFF << 32) | value)
    # ::ffff:a.b.c.d is that address on a dual-stack socket: judged exactly as it is.
    assert (refusal(mapped) is None) == (refusal(inner) is None)
    if refusal(inner) is None:
        return
    forms = [
        ipaddress.IPv6Address((0xFFFF << 32) | value),  # ::ffff:a.b.c.d
        ipaddress.IPv6Address((0x2002 << 112) | (value << 80)),  # 6to4
        ipaddress.IPv6Address((0x64FF9B << 96) | value),  # NAT64, well-known prefix
    ]
    for form in forms:
        assert refusal(form) is not None, f"{form} leads to {inner}"
