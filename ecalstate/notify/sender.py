"""Webhook notifications (Mattermost/Slack incoming webhooks), like the original's shifter channels.

:func:`deliver` reads what happened since each channel's cursor (task failures,
jobs out of retries, low-level job failures) and the campaign's current health
problems, and posts one message per channel: ``{"text", "username", "channel"?}``.
It runs after the fact, from the audit: a webhook that is slow or down never
blocks or fails a state transition. A failed delivery leaves the cursor where it
was (the next run sends the same events again), is logged without the URL, and
shows in ``ecalstate health`` as the failing stage ``@notify send``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import urlencode

from ..attention import CLEAR, observe
from ..errors import EcalStateError, Invalid
from ..monitoring import SILENT_AFTER
from ..results import Health
from ..secrets import check_private
from ..store import Store
from .settings import NOTIFIER, NotifyConfig, NotifyEvent, NotifySettings, Webhook

log = logging.getLogger("ecalstate.notify")
#: lines per message; the rest is summarised (Mattermost posts are limited to 16k characters)
MAX_LINES = 30


class NotifyError(EcalStateError):
    """A webhook could not be reached or refused the message (the URL is never part of the message)."""


@dataclass(frozen=True)
class Delivery:
    """What one channel was sent: events and health problems told, or the error and what stays pending."""

    campaign: str
    channel: str
    events: int
    problems: int
    pending: int
    error: Optional[str] = None
    #: another sender held the channel: nothing sent by this one (that sender tells what is pending)
    busy: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


#: the most a webhook URL file may hold (one URL)
MAX_URL_FILE = 8192


def read_url_file(path: str) -> str:
    """The webhook URL in a file (one line); errors name the file, never its content."""
    try:
        with open(path, encoding="utf-8") as handle:
            check_private(handle.fileno(), path, "the webhook URL file")  # the URL is the channel's password
            text = handle.read(MAX_URL_FILE).strip()
    except OSError as err:
        raise Invalid(f"cannot read the webhook URL file {path}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise Invalid(f"the webhook URL file {path} is not UTF-8 text") from None
    if "\n" in text or not text.startswith(("http://", "https://")):
        raise Invalid(f"{path} must hold one http:// or https:// URL")
    return text


def resolve_url(hook: Webhook) -> str:
    """The URL, read where the configuration points, at the moment of sending (rotating it needs no database write)."""
    if hook.url is not None:
        return hook.url
    if hook.url_file is not None:
        try:
            return read_url_file(hook.url_file)
        except Invalid as err:
            raise NotifyError(str(err)) from None
    value = os.environ.get(str(hook.url_env), "").strip()
    if not value:
        raise NotifyError(f"environment variable {hook.url_env} (the webhook URL) is not set")
    return value


def post(url: str, payload: dict[str, Any], timeout: float = 5.0, retries: int = 2, backoff: float = 1.0) -> None:
    """POST ``payload`` as JSON; retry ``retries`` times with doubling ``backoff``; :class:`NotifyError` at the end."""
    import urllib.error
    import urllib.request

    body = json.dumps(payload).encode()
    problem = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        request = urllib.request.Request(url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                response.read()
                return
        except urllib.error.HTTPError as err:
            problem = f"HTTP {err.code} {err.reason}"
            if err.code < 500 and err.code != 429:
                break  # the webhook refused this message: sending it again will not help
        except (urllib.error.URLError, OSError) as err:
            reason = err.reason if isinstance(err, urllib.error.URLError) else err
            problem = f"unreachable ({reason})"
    raise NotifyError(f"webhook {problem} after {attempt + 1} attempt(s)")


#: a task instance's page in the web view: ``(task, run) -> " URL"``, or nothing when no view is configured
Link = Callable[[str, Optional[int]], str]


def view_link(base: Optional[str], campaign: str) -> Link:
    """Links to the instance pages of ``ecalstate serve`` at ``base`` (its /instance route)."""
    if not base:
        return lambda task, run: ""
    root = base.rstrip("/")
    return lambda task, run: "" if run is None else (
        f" {root}/instance?{urlencode({'c': campaign, 'task': task, 'run': run})}")


def describe(event: NotifyEvent, link: Link = lambda task, run: "") -> str:
    """One line per event, in the shifters' words (and the link to its instance)."""
    return _describe(event) + link(event.task, event.run_number)


def _describe(event: NotifyEvent) -> str:
    where = f"task {event.task} run {event.run_number}"
    if event.kind == "attention":
        if event.level == CLEAR:
            return f"resolved: {where} no longer waits ({event.reason})"
        return f"{event.level}: {event.message or where} [{event.reason}]; to resolve: {event.command}"
    if event.kind == "failed":
        return f"{where} failed" + (f": {event.reason}" if event.reason else "")
    job = f"{where} job {event.jid}"
    if event.kind == "retries":
        return f"{job} failed with no retry left ({event.attempts} attempts, max retries {event.max_retries})"
    return f"{job} failed (attempt {event.attempts})" + (f": {event.reason}" if event.reason else "")


def health_problems(health: Health, link: Link = lambda task, run: "") -> dict[str, str]:
    """Silent or failing handler stages, keyed so that each is told once (what instances need is told from the
    attention model's audit rows, once per instance, reason and level)."""
    problems: dict[str, str] = {}
    for beat in health.silent:
        if beat.task != NOTIFIER:
            problems[f"silent:{beat.task}:{beat.stage}"] = (f"handler {beat.task} {beat.stage} silent since "
                                                            f"{beat.last_at}")
    for beat in health.failing:
        if beat.task != NOTIFIER:
            problems[f"failing:{beat.task}:{beat.stage}"] = f"handler {beat.task} {beat.stage} failing: {beat.message}"
    return problems


def render(campaign: str, lines: list[str]) -> str:
    shown = lines[:MAX_LINES]
    more = len(lines) - len(shown)
    tail = [f"... and {more} more (ecalstate history -c {campaign})"] if more else []
    return "\n".join([f"ecalstate, campaign {campaign}:"] + [f"- {line}" for line in shown] + tail)


def deliver(
    store: Store,
    campaign: str,
    stuck_after: Optional[float] = None,
    silent_after: float = SILENT_AFTER,
    timeout: float = 5.0,
    retries: int = 2,
    backoff: float = 1.0,
) -> list[Delivery]:
    """Send each configured channel what it has not been told yet; never raises for an unreachable webhook."""
    settings = NotifySettings(store)
    config = settings.config(campaign)
    if config is None:
        return []
    # what needs action now, recorded (once, whoever else looks at the same time) before the channels read it
    seen_now = observe(store, campaign, stuck_after=stuck_after, silent_after=silent_after)
    problems = health_problems(seen_now.health, view_link(config.view_url, campaign))
    lease = (timeout + backoff * 2 ** retries) * (retries + 1)
    out = [_deliver_channel(settings, campaign, config, name, hook, problems, timeout, retries, backoff, lease)
           for name, hook in config.channels()]
    if all(d.busy for d in out):
        return out  # another sender holds every channel: it reports
    failed = [d for d in out if not d.ok]
    message = "; ".join(f"{d.channel}: {d.error}, {d.pending} pending" for d in failed) or \
        "delivered " + ", ".join(f"{d.channel}: {d.events + d.problems}" for d in out)
    settings.heartbeat(campaign, not failed, message[:500])
    return out


def told(event: NotifyEvent, hook: Webhook) -> bool:
    """Whether a channel is told ``event``: its kind is one the channel takes (what needs action goes with
    ``health``); a failed instance is told once, as the failure, where the channel takes failures."""
    if event.kind == "attention":
        return "health" in hook.events and not (event.reason == "failed" and "failed" in hook.events)
    return event.kind in hook.events


def _deliver_channel(
    settings: NotifySettings, campaign: str, config: NotifyConfig, name: str, hook: Webhook,
    problems: dict[str, str], timeout: float, retries: int, backoff: float, lease: float,
) -> Delivery:
    held = settings.reserve(campaign, name, lease)
    if held is None:  # another sender is telling this channel the same events right now
        return Delivery(campaign, name, 0, 0, 0, busy=True)
    link = view_link(config.view_url, campaign)
    lines = [describe(e, link) for e in held.events if told(e, hook)]
    current = problems if "health" in hook.events else {}
    seen = settings.seen(campaign, name)
    fresh = [text for key, text in sorted(current.items()) if key not in seen]
    fresh += [f"resolved: {text or key}" for key, text in sorted(seen.items()) if key not in current]
    if lines or fresh:
        payload: dict[str, Any] = {"text": render(campaign, lines + fresh), "username": config.username}
        if hook.channel:
            payload["channel"] = hook.channel
        try:
            post(resolve_url(hook), payload, timeout, retries, backoff)
        except NotifyError as err:
            log.warning(f"notifications for campaign {campaign} ({name} channel) not delivered: {err}")
            settings.release(held, delivered=False)
            return Delivery(campaign, name, 0, 0, len(lines) + len(fresh), str(err))
    settings.release(held, delivered=True, seen=current)
    return Delivery(campaign, name, len(lines), len(fresh), 0)


def send_test(store: Store, campaign: str, channel: str = "main", timeout: float = 5.0) -> None:
    """Post a test message to one channel (checks the URL and the channel name)."""
    config = NotifySettings(store).config(campaign)
    hook = None if config is None else dict(config.channels()).get(channel)
    if config is None or hook is None:
        raise Invalid(f"campaign {campaign!r} has no {channel} notification channel configured")
    payload: dict[str, Any] = {"text": f"ecalstate, campaign {campaign}: test message ({channel} channel)",
                               "username": config.username}
    if hook.channel:
        payload["channel"] = hook.channel
    post(resolve_url(hook), payload, timeout, retries=0)


def webhook(
    url_file: Optional[str], url_env: Optional[str], channel: Optional[str], events: list[str], default: tuple[str, ...]
) -> Optional[Webhook]:
    """A channel from its URL file or environment variable (``None`` when neither is given)."""
    if url_file is None and url_env is None:
        if channel or events:
            raise Invalid("a channel name or event list needs its webhook URL file or environment variable")
        return None
    if url_file is not None and url_env is not None:
        raise Invalid("give the webhook URL as a file or as an environment variable, not both")
    if url_file is not None:
        url_file = os.path.abspath(url_file)
        read_url_file(url_file)  # checked now, read again at each sending: only the path is stored
    return Webhook(url_file, url_env, channel or None, tuple(events) or default)


def status(store: Store, campaign: str) -> dict[str, Any]:
    """The configuration without secrets, with what each channel has pending."""
    settings = NotifySettings(store)
    config = settings.config(campaign)
    if config is None:
        return {"campaign": campaign, "configured": False, "channels": []}
    channels = []
    for name, hook in config.channels():
        events, _ = settings.events(campaign, name, limit=100_000)
        channels.append({"channel": name, "url": hook.source(), "mattermost_channel": hook.channel,
                         "events": list(hook.events), "pending": sum(told(e, hook) for e in events)})
    return {"campaign": campaign, "configured": True, "username": config.username, "channels": channels}
