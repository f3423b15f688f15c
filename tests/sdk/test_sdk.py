"""Drives a running dialtone with the official Retell Python SDK, unchanged but for
base_url. Run by tests/retell_sdk.rs, which starts the server and sets
DIALTONE_BASE_URL and DIALTONE_API_KEY.

The SDK's typed params only list Retell's hosted response engines; `response_engine` is a
TypedDict, which Python does not enforce at run time, so the plain dict
{"type": "audio-websocket", ...} goes through as is (no extra_body needed). `voice_id` is a
required argument of agent.create; the server accepts and ignores it.
"""

import os
import re
import sys
import time
import traceback

import retell
from retell import Retell

BASE_URL = os.environ["DIALTONE_BASE_URL"]
KEY = os.environ["DIALTONE_API_KEY"]
# The Rust harness checks that this never shows up in the server's TRACE log.
TRUNK_PASSWORD = os.environ.get("DIALTONE_TEST_TRUNK_PASSWORD", "trunk-pw-not-for-logs")

client = Retell(api_key=KEY, base_url=BASE_URL, max_retries=0)
results = []


def case(fn):
    results.append(fn)
    return fn


def engine(url="wss://bot.example.com/ws", encoding="pcm_16000", headers=None):
    return {
        "type": "audio-websocket",
        "url": url,
        "audio_encoding": encoding,
        "headers": headers or {},
    }


def new_agent(**kw):
    return client.agent.create(
        response_engine=engine(headers={"Authorization": "Bearer sekrit"}),
        voice_id="none",
        **kw,
    )


@case
def agent_create_and_retrieve():
    a = new_agent(agent_name="support bot", webhook_url="https://example.com/hooks")
    assert a.agent_id.startswith("agent_"), a.agent_id
    assert a.agent_name == "support bot"
    assert a.version == 0
    assert a.max_call_duration_ms == 3600000
    assert a.end_call_after_silence_ms == 600000
    assert a.ring_duration_ms == 30000
    assert a.webhook_url == "https://example.com/hooks"
    assert a.last_modification_timestamp > 0
    re = a.response_engine
    re = re if isinstance(re, dict) else re.model_dump()
    assert re["type"] == "audio-websocket", re
    assert re["url"] == "wss://bot.example.com/ws"
    assert re["audio_encoding"] == "pcm_16000"
    assert re["headers"] == {"Authorization": "***"}, "header values are never returned"
    got = client.agent.retrieve(a.agent_id)
    assert got.agent_id == a.agent_id and got.agent_name == "support bot"


@case
def agent_update_bumps_version_and_keeps_redacted_headers():
    a = new_agent(agent_name="before")
    u = client.agent.update(a.agent_id, agent_name="after", ring_duration_ms=45000)
    assert u.agent_name == "after" and u.ring_duration_ms == 45000
    assert u.version == a.version + 1
    assert u.last_modification_timestamp >= a.last_modification_timestamp
    # Round trip: send the redacted engine back; the stored secret must survive.
    u2 = client.agent.update(
        a.agent_id,
        response_engine=engine(encoding="mulaw_8000", headers={"Authorization": "***"}),
    )
    re = u2.response_engine
    re = re if isinstance(re, dict) else re.model_dump()
    assert re["audio_encoding"] == "mulaw_8000"
    assert re["headers"] == {"Authorization": "***"}
    assert u2.version == a.version + 2


@case
def agent_list_and_delete():
    a = new_agent(agent_name="listed")
    page = client.agent.list(limit=1000)
    assert any(item.agent_id == a.agent_id for item in page.items), page
    client.agent.delete(a.agent_id)
    try:
        client.agent.retrieve(a.agent_id)
        raise AssertionError("deleted agent still retrievable")
    except retell.NotFoundError:
        pass


@case
def agent_validation_is_a_400():
    for bad in (
        dict(response_engine={"type": "retell-llm", "llm_id": "x"}),
        dict(response_engine=engine(url="https://not-a-websocket")),
        dict(response_engine=engine(encoding="opus_48000")),
        dict(response_engine=engine(), max_call_duration_ms=10),
    ):
        try:
            client.agent.create(voice_id="none", **bad)
            raise AssertionError(f"accepted {bad}")
        except retell.BadRequestError as e:
            assert e.status_code == 400


@case
def register_and_retrieve_call():
    a = new_agent(agent_name="caller")
    before = int(time.time() * 1000)
    c = client.call.register_phone_call(
        agent_id=a.agent_id,
        from_number="+15550001111",
        to_number="+15550002222",
        direction="inbound",
        metadata={"customer_id": 7},
        retell_llm_dynamic_variables={"name": "Ada"},
    )
    assert c.call_id.startswith("call_"), c.call_id
    assert c.call_status == "registered"
    assert c.call_type == "phone_call"
    assert c.agent_id == a.agent_id and c.agent_version == 0
    assert c.direction == "inbound"
    assert c.from_number == "+15550001111" and c.to_number == "+15550002222"
    assert c.metadata == {"customer_id": 7}
    assert c.retell_llm_dynamic_variables == {"name": "Ada"}
    extra = c.model_extra or {}
    # The SIP port follows the host when it is not 5060.
    assert re.fullmatch(rf"sip:{c.call_id}@127\.0\.0\.1(:\d+)?", extra["sip_uri"]), extra
    assert extra["registered_until"] >= before + 290_000
    got = client.call.retrieve(c.call_id)
    assert got.call_id == c.call_id and got.call_status == "registered"


@case
def register_for_unknown_agent_is_404():
    try:
        client.call.register_phone_call(agent_id="agent_does_not_exist")
        raise AssertionError("registered a call for a missing agent")
    except retell.NotFoundError as e:
        assert "agent_does_not_exist" in str(e)


@case
def list_update_stop_delete_calls():
    a = new_agent(agent_name="lister")
    ids = [client.call.register_phone_call(agent_id=a.agent_id).call_id for _ in range(3)]
    filt = {"agent": [{"agent_id": a.agent_id}]}
    page = client.call.list(filter_criteria=filt, sort_order="ascending", limit=2)
    assert [c.call_id for c in page.items] == ids[:2], page
    assert page.has_more and page.pagination_key == ids[1]
    rest = client.call.list(
        filter_criteria=filt, sort_order="ascending", limit=2, pagination_key=page.pagination_key
    )
    assert [c.call_id for c in rest.items] == ids[2:] and not rest.has_more
    newest = client.call.list(filter_criteria=filt, limit=1, include_total=True)
    assert newest.items[0].call_id == ids[2] and newest.total == 3

    u = client.call.update(ids[0], metadata={"note": "vip"})
    assert u.metadata == {"note": "vip"}
    assert client.call.retrieve(ids[0]).metadata == {"note": "vip"}

    client.call.stop(ids[0])
    stopped = client.call.retrieve(ids[0])
    assert stopped.call_status == "ended", stopped
    assert stopped.disconnection_reason == "manual_stopped"
    try:
        client.call.stop(ids[0])
        raise AssertionError("stopped an ended call twice")
    except retell.ConflictError:
        pass

    ended = client.call.list(
        filter_criteria={
            "agent": [{"agent_id": a.agent_id}],
            "call_status": {"op": "in", "type": "enum", "value": ["ended"]},
        }
    )
    assert [c.call_id for c in ended.items] == [ids[0]]

    client.call.delete(ids[0])
    try:
        client.call.retrieve(ids[0])
        raise AssertionError("deleted call still retrievable")
    except retell.NotFoundError:
        pass
    try:
        client.call.stop("call_nope")
        raise AssertionError("stopped a call that does not exist")
    except retell.NotFoundError:
        pass


def no_password(number, raw_text=None):
    """The trunk password must not be anywhere in a phone number response."""
    dumped = repr(number.model_dump()) + repr(number.model_extra or {})
    assert TRUNK_PASSWORD not in dumped, dumped
    assert "password" not in dumped, dumped
    if raw_text is not None:
        assert TRUNK_PASSWORD not in raw_text and "password" not in raw_text, raw_text


@case
def phone_number_import_and_retrieve():
    a = new_agent(agent_name="inbound a")
    b = new_agent(agent_name="inbound b")
    n = client.phone_number.import_(
        phone_number="+14155550100",
        termination_uri="example.pstn.twilio.com",
        sip_trunk_auth_username="trunkuser",
        sip_trunk_auth_password=TRUNK_PASSWORD,
        inbound_agents=[
            {"agent_id": a.agent_id, "weight": 0.7},
            {"agent_id": b.agent_id, "weight": 0.3},
        ],
        outbound_agents=[{"agent_id": a.agent_id, "weight": 1}],
        nickname="front desk",
        allowed_inbound_country_list=["US", "CA"],
        codecs=["PCMU", "PCMA"],
    )
    assert n.phone_number == "+14155550100"
    assert n.phone_number_type == "custom"
    assert n.phone_number_pretty == "+1 (415) 555-0100", n.phone_number_pretty
    assert n.nickname == "front desk"
    assert [(x.agent_id, x.weight) for x in n.inbound_agents] == [
        (a.agent_id, 0.7),
        (b.agent_id, 0.3),
    ], n.inbound_agents
    assert [x.agent_id for x in n.outbound_agents] == [a.agent_id]
    assert n.allowed_inbound_country_list == ["US", "CA"]
    cfg = n.sip_outbound_trunk_config
    assert cfg.termination_uri == "example.pstn.twilio.com"
    assert cfg.auth_username == "trunkuser"
    assert cfg.transport == "TCP"
    assert cfg.codecs == ["PCMU", "PCMA"]
    assert n.last_modification_timestamp > 0
    no_password(n)

    got = client.phone_number.retrieve("+14155550100")
    assert got.phone_number == n.phone_number and got.nickname == "front desk"
    no_password(got)
    # The raw JSON, not just what the SDK's model kept.
    raw = client.phone_number.with_raw_response.retrieve("+14155550100")
    assert raw.http_request.url.path.endswith("+14155550100"), raw.http_request.url
    no_password(got, raw.http_response.text)
    # Without the '+' too.
    assert client.phone_number.retrieve("14155550100").phone_number == "+14155550100"


@case
def phone_number_import_errors():
    a = new_agent(agent_name="errors")
    client.phone_number.import_(phone_number="+14155550111", termination_uri="t.example.com")
    try:
        client.phone_number.import_(phone_number="+14155550111", termination_uri="t.example.com")
        raise AssertionError("imported a number twice")
    except retell.ConflictError:
        pass
    for bad in (
        dict(phone_number="4155550100", termination_uri="t.example.com"),
        dict(phone_number="+14155550112", termination_uri="tel:+1"),
        dict(phone_number="+14155550112", termination_uri="t.example.com", transport="SCTP"),
        dict(
            phone_number="+14155550112",
            termination_uri="t.example.com",
            inbound_agents=[{"agent_id": a.agent_id, "weight": 0.5}],
        ),
        dict(
            phone_number="+14155550112",
            termination_uri="t.example.com",
            allowed_outbound_country_list=["usa"],
        ),
    ):
        try:
            client.phone_number.import_(**bad)
            raise AssertionError(f"accepted {bad}")
        except retell.BadRequestError as e:
            assert e.status_code == 400
    try:
        client.phone_number.import_(
            phone_number="+14155550112",
            termination_uri="t.example.com",
            outbound_agents=[{"agent_id": "agent_nope", "weight": 1}],
        )
        raise AssertionError("bound a missing agent")
    except retell.NotFoundError as e:
        assert "agent_nope" in str(e)
    try:
        client.phone_number.retrieve("+14155550112")
        raise AssertionError("a failed import left a number behind")
    except retell.NotFoundError:
        pass


@case
def phone_number_list():
    for i in range(3):
        client.phone_number.import_(
            phone_number=f"+1650555010{i}", termination_uri="t.example.com"
        )
    page = client.phone_number.list(limit=1000)
    numbers = [n.phone_number for n in page.items]
    print(f"     listed {len(numbers)} phone numbers")
    assert {"+16505550100", "+16505550101", "+16505550102"} <= set(numbers), numbers
    assert not page.has_more
    for n in page.items:
        no_password(n)
    first = client.phone_number.list(limit=2, sort_order="ascending")
    assert len(first.items) == 2 and first.has_more
    assert first.pagination_key == first.items[-1].phone_number
    rest = client.phone_number.list(
        limit=1000, sort_order="ascending", pagination_key=first.pagination_key
    )
    assert len(first.items) + len(rest.items) == len(numbers) and not rest.has_more


@case
def phone_number_update():
    a = new_agent(agent_name="outbound")
    client.phone_number.import_(
        phone_number="+14155550120",
        termination_uri="trunk.example.com",
        sip_trunk_auth_username="u1",
        sip_trunk_auth_password="first-password",
        nickname="before",
    )
    u = client.phone_number.update(
        "+14155550120",
        nickname="after",
        auth_username="u2",
        auth_password=TRUNK_PASSWORD,
        transport="UDP",
        outbound_agents=[{"agent_id": a.agent_id, "weight": 1}],
        termination_uri="trunk2.example.com:5080",
    )
    assert u.nickname == "after"
    assert u.sip_outbound_trunk_config.auth_username == "u2"
    assert u.sip_outbound_trunk_config.transport == "UDP"
    assert u.sip_outbound_trunk_config.termination_uri == "trunk2.example.com:5080"
    assert [x.agent_id for x in u.outbound_agents] == [a.agent_id]
    no_password(u)
    got = client.phone_number.retrieve("+14155550120")
    assert got.nickname == "after" and got.sip_outbound_trunk_config.transport == "UDP"
    raw = client.phone_number.with_raw_response.retrieve("+14155550120")
    no_password(got, raw.http_response.text)
    try:
        client.phone_number.update("+14155550120", transport="SCTP")
        raise AssertionError("accepted transport SCTP")
    except retell.BadRequestError:
        pass
    assert client.phone_number.retrieve("+14155550120").nickname == "after"


@case
def phone_number_delete():
    client.phone_number.import_(phone_number="+14155550130", termination_uri="t.example.com")
    client.phone_number.delete("+14155550130")
    try:
        client.phone_number.retrieve("+14155550130")
        raise AssertionError("deleted number still retrievable")
    except retell.NotFoundError:
        pass
    try:
        client.phone_number.delete("+14155550130")
        raise AssertionError("deleted a number twice")
    except retell.NotFoundError:
        pass


@case
def create_phone_call_dials_through_the_trunk():
    agent = new_agent(agent_name="caller")
    # A trunk nobody answers on: the call is created and dialled; only the API shape is
    # checked here (tests/outbound_trunk.rs drives real trunks).
    client.phone_number.import_(
        phone_number="+14155550140",
        termination_uri="127.0.0.1:9",
        transport="UDP",
        outbound_agents=[{"agent_id": agent.agent_id, "weight": 1}],
    )
    call = client.call.create_phone_call(
        from_number="+14155550140",
        to_number="+14155550141",
        metadata={"campaign": "sdk"},
        extra_body={"custom_sip_headers": {"X-Campaign": "sdk"}},
    )
    assert call.direction == "outbound", call
    assert call.from_number == "+14155550140", call
    assert call.to_number == "+14155550141", call
    assert call.agent_id == agent.agent_id, call
    assert call.call_status in ("registered", "ongoing", "not_connected"), call
    got = client.call.retrieve(call.call_id)
    assert got.metadata == {"campaign": "sdk"}, got
    try:
        client.call.create_phone_call(from_number="+14155550999", to_number="+14155550141")
        raise AssertionError("an unknown from_number made a call")
    except retell.NotFoundError:
        pass
    client.call.stop(call.call_id)


@case
def wrong_key_is_401():
    bad = Retell(api_key="wrong-key-123456", base_url=BASE_URL, max_retries=0)
    try:
        bad.agent.list()
        raise AssertionError("wrong key accepted")
    except retell.AuthenticationError:
        pass


def main():
    passed = failed = 0
    for fn in results:
        try:
            fn()
            passed += 1
            print(f"ok   {fn.__name__}")
        except Exception:
            failed += 1
            print(f"FAIL {fn.__name__}")
            traceback.print_exc()
    print(f"retell-sdk {retell.__version__}: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
