"""The parts of a webhook delivery that need no database: the body, the Standard Webhooks
signature (checked with the ``standardwebhooks`` verifier), secrets, URL checks, the
backoff, the settings and the metric."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import itertools
import json
import uuid

import httpx
import pytest
import standardwebhooks

from runner import metrics
from runner.settings import SettingsError, load_settings
from runner.store.webhooks import ClaimedDelivery
from runner.webhooks import (
    RETRY_WINDOW,
    WebhookOptions,
    attempt_delivery,
    literal_address_problem,
    message_body,
    new_secret,
    secret_problem,
    signed_headers,
    url_problem,
    webhook_client,
)


def _delivery(**changes: object) -> ClaimedDelivery:
    values: dict[str, object] = {
        "delivery_id": 7, "lease_token": uuid.uuid4(), "endpoint_id": uuid.uuid4(),
        "url": "https://hooks.example.com/in", "secret": new_secret(), "allow_private": False,
        "event_type": "task.completed", "webhook_id": "msg_abc", "attempt": 1,
        "event_created_at": dt.datetime(2026, 3, 1, 9, 30, 0, 123456, tzinfo=dt.UTC),
        "payload": {"task_id": "t", "name": "Zoë"},
    }
    values.update(changes)
    return ClaimedDelivery(**values)  # type: ignore[arg-type]


def test_the_body_is_type_timestamp_data_and_the_same_every_time() -> None:
    delivery = _delivery()
    body = message_body(delivery)
    assert json.loads(body) == {"type": "task.completed",
                                "timestamp": "2026-03-01T09:30:00.123456Z",
                                "data": {"task_id": "t", "name": "Zoë"}}
    assert message_body(delivery) == body


def test_the_signature_verifies_with_the_standardwebhooks_verifier() -> None:
    delivery = _delivery()
    body = message_body(delivery)
    now = dt.datetime.now(dt.UTC)
    headers = signed_headers(delivery.secret, delivery.webhook_id, body, at=now)
    assert headers["webhook-id"] == "msg_abc"
    assert headers["webhook-timestamp"] == str(int(now.timestamp()))
    assert headers["webhook-signature"].startswith("v1,")
    verifier = standardwebhooks.Webhook(delivery.secret)
    assert verifier.verify(body, headers)["data"]["name"] == "Zoë"
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        verifier.verify(body.replace(b"Zo", b"Jo"), headers)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(new_secret()).verify(body, headers)


def test_the_signature_is_hmac_sha256_of_id_timestamp_body() -> None:
    # The contract's definition, computed by hand.
    import hashlib
    import hmac

    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    headers = signed_headers(secret, "msg_1", b'{"a":1}', at=at)
    digest = hmac.new(b"k" * 32, f"msg_1.{int(at.timestamp())}.".encode() + b'{"a":1}',
                      hashlib.sha256).digest()
    assert headers["webhook-signature"] == "v1," + base64.b64encode(digest).decode()


def test_secrets() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_") and secret_problem(secret) is None
    assert len(base64.b64decode(secret[6:])) == 32
    assert "starts with 'whsec_'" in (secret_problem("abc") or "")
    assert "base64" in (secret_problem("whsec_not base64!") or "")
    short = "whsec_" + base64.b64encode(b"x" * 8).decode()
    assert "24 to 64 bytes" in (secret_problem(short) or "")


@pytest.mark.parametrize(("url", "problem"), [
    ("https://hooks.example.com/in?x=1", None),
    ("http://203.0.114.5:8080/", None),
    ("ftp://example.com/", "http"),
    ("hooks.example.com/in", "http"),
    ("https:///in", "no host"),
])
def test_url_form(url: str, problem: str | None) -> None:
    found = url_problem(url)
    assert (found is None) if problem is None else (problem in (found or ""))


@pytest.mark.parametrize(("url", "problem"), [
    ("https://hooks.example.com/", None),
    ("https://8.8.8.8/", None),
    ("http://localhost:8080/", "loopback name"),
    ("http://a.localhost./", "loopback name"),
    ("http://127.0.0.1/", "loopback"),
    ("http://[::1]/", "loopback"),
    ("http://10.0.0.1/", "private"),
    ("http://[::ffff:192.168.0.1]/", "IPv4-mapped"),
    ("http://[64:ff9b::a00:1]/", "NAT64 address of private"),
])
def test_literal_addresses(url: str, problem: str | None) -> None:
    found = literal_address_problem(url)
    assert (found is None) if problem is None else (problem in (found or ""))


async def test_an_attempt_refuses_a_client_that_reads_proxy_variables() -> None:
    async with httpx.AsyncClient() as http:
        with pytest.raises(ValueError, match="proxy"):
            await attempt_delivery(http, _delivery(), deadline=1)


async def test_a_literal_private_address_is_refused_without_connecting() -> None:
    async with webhook_client(concurrency=1, timeout=1) as http:
        result = await attempt_delivery(http, _delivery(url="http://127.0.0.1:9/"), deadline=1)
    assert not result.succeeded and result.response_status is None
    assert result.error == ("refused: '127.0.0.1' resolves to a non-public address "
                            "(127.0.0.1: loopback); the endpoint does not allow private "
                            "addresses")


def test_backoff_grows_and_is_capped() -> None:
    options = WebhookOptions(retry_base_delay=5, retry_max_delay=3600)
    delays = [options.retry_delay(attempt) for attempt in range(1, 20)]
    assert 3.75 <= delays[0] <= 6.25
    growing = delays[:9]  # before the cap: each about twice the one before
    assert all(later > earlier for earlier, later in itertools.pairwise(growing))
    assert max(delays) == 3600
    assert options.retry_window == RETRY_WINDOW == 86400
    assert options.lease == options.timeout + 10
    assert WebhookOptions(lease_seconds=3).lease == 3


def test_settings() -> None:
    options = WebhookOptions.from_settings(load_settings(
        RUNNER_WEBHOOK_CONCURRENCY="8", RUNNER_WEBHOOK_TIMEOUT="3",
        RUNNER_WEBHOOK_RETRY_BASE_DELAY="1", RUNNER_WEBHOOK_RETRY_MAX_DELAY="60",
        RUNNER_POLL_INTERVAL="2"))
    assert (options.concurrency, options.timeout, options.retry_base_delay,
            options.retry_max_delay, options.poll_interval) == (8, 3, 1, 60, 2)
    with pytest.raises(SettingsError, match=r"RUNNER_WEBHOOK_RETRY_BASE_DELAY.*"
                                            r"RUNNER_WEBHOOK_RETRY_MAX_DELAY"):
        load_settings(RUNNER_WEBHOOK_RETRY_BASE_DELAY="90", RUNNER_WEBHOOK_RETRY_MAX_DELAY="60")
    with pytest.raises(SettingsError, match="RUNNER_WEBHOOK_CONCURRENCY"):
        load_settings(RUNNER_WEBHOOK_CONCURRENCY="0")


def test_the_delivery_metric_is_a_closed_vocabulary() -> None:
    def value() -> float:
        return metrics.REGISTRY.get_sample_value(
            "agent_runner_webhook_deliveries_total", {"outcome": "gave_up"}) or 0.0

    before = value()
    metrics.webhook_delivery("gave_up")
    assert value() == before + 1
    for outcome in metrics.WEBHOOK_OUTCOMES:  # every series exists from the start
        assert metrics.REGISTRY.get_sample_value(
            "agent_runner_webhook_deliveries_total", {"outcome": outcome}) is not None
    with pytest.raises(ValueError, match="unknown webhook outcome"):
        metrics.webhook_delivery("https://hooks.example.com/")


async def test_resolving_on_write_is_bounded_and_checks_every_address() -> None:
    from runner.webhooks import resolved_address_problem

    async def mixed(host: str, port: int) -> list[str]:
        return ["93.184.215.14", "10.0.0.8"]

    async def hangs(host: str, port: int) -> list[str]:
        await asyncio.sleep(30)
        return []

    problem = await resolved_address_problem("https://hooks.example.com/", resolve=mixed)
    assert problem is not None and "10.0.0.8: private" in problem
    with pytest.raises(OSError, match=r"within 0\.1 s"):
        await resolved_address_problem("https://hooks.example.com/", resolve=hangs,
                                       deadline=0.1)
