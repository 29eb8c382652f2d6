"""What the notifier keeps in the database: its per-campaign configuration, cursors and delivery state.

The configuration lives in ``campaign.settings`` under ``notify``. Notifications
are derived from the audit table after a cursor per campaign and channel
(``export_cursor`` targets ``notify:<campaign>:<channel>``), so sending them never
touches, delays or fails a state transition; history brought in by
``import-influx`` (actor ``import``) is not announced again. The notifier's own runs are recorded
as a heartbeat of the pseudo-task ``@notify`` (no real task can have that name),
so ``ecalstate health`` shows a webhook that is down, or a notifier that stopped.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from ..auditlog import RETRY_ROWS
from ..base import IMPORT_ACTOR, Ctx, campaign_id
from ..catalog import campaign_settings, set_campaign_setting
from ..clock import seconds_between
from ..errors import Invalid
from ..monitoring import (drop_cursors, forget_heartbeats, move_cursor, read_cursor, read_mark, record_heartbeat,
                          write_mark)
from ..store import Store

#: what a channel can be told: a task instance failed, a job failed with no retry left, any job failed
#: (low level, for the development channel), new health problems (stuck, silent or failing stages)
EVENTS = ("failed", "retries", "job-failed", "health")
CHANNELS = ("main", "dev")
DEFAULT_EVENTS = {"main": ("failed", "retries", "health"), "dev": ("job-failed",)}
#: heartbeat task name of the notifier itself; check_name() refuses it for real tasks
NOTIFIER = "@notify"
NOTIFIER_STAGE = "send"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

#: the rows a channel may be told: failures of instances and jobs, and what needs action (the attention model's
#: rows: a reason appearing, changing level, clearing), the detail of those
EVENTS_SQL = f"""
SELECT a.id, a.ts, a.entity, a.task, a.run_number, a.jid, a.reason, t.max_retries,
  CASE WHEN a.entity = 'job' THEN 1 + (
    SELECT COUNT(*) FROM audit_log b WHERE b.instance_id = a.instance_id AND b.job_pk = a.job_pk
      AND {RETRY_ROWS} AND b.id < a.id) END,
  a.from_status, a.to_status, CASE WHEN a.entity = 'attention' THEN a.detail END
FROM audit a LEFT JOIN task t ON t.campaign_id = a.campaign_id AND t.name = a.task
WHERE a.campaign_id = ? AND a.id > ? AND a.actor <> ?
  AND ((a.to_status = 'failed' AND a.entity IN ('task', 'job')) OR a.entity = 'attention')
ORDER BY a.id LIMIT ?
"""
#: how long a sender's reservation of a channel's events holds before another sender may take them over (it died)
MIN_LEASE = 60.0


@dataclass(frozen=True)
class Webhook:
    """One channel: a Mattermost/Slack incoming webhook.

    The URL is a secret, so the database holds only where to find it when sending: the path of a file (kept
    private by its owner) or the name of an environment variable. ``url`` is read from databases configured by
    earlier versions, which stored the URL itself; ``notify show`` flags those and ``notify set`` replaces them.
    """

    url_file: Optional[str] = None
    url_env: Optional[str] = None
    channel: Optional[str] = None
    events: tuple[str, ...] = ()
    url: Optional[str] = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if sum(v is not None for v in (self.url_file, self.url_env, self.url)) != 1:
            raise Invalid("a webhook needs its URL file or the environment variable holding its URL, one of them")
        if self.url_file is not None and not os.path.isabs(self.url_file):
            raise Invalid(f"the webhook URL file must be an absolute path, got {self.url_file!r}")
        if self.url_env is not None and not _ENV_NAME.match(self.url_env):
            raise Invalid(f"invalid environment variable name {self.url_env!r}")
        unknown = [e for e in self.events if e not in EVENTS]
        if unknown or not self.events:
            raise Invalid(f"invalid notification events {', '.join(unknown) or '(none)'} (valid: {', '.join(EVENTS)})")

    def source(self) -> str:
        """Where the URL comes from, without the URL."""
        if self.url is not None:
            return "URL stored in the database by an earlier version (insecure: run `notify set` again)"
        return f"URL from file {self.url_file}" if self.url_file is not None else f"URL from ${self.url_env}"

    def to_dict(self) -> dict[str, Any]:
        """What the database keeps: references only (a legacy stored URL is kept as it was until replaced)."""
        refs = {"url_file": self.url_file, "url_env": self.url_env, "channel": self.channel,
                "events": list(self.events)}
        return refs if self.url is None else {**refs, "url": self.url}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Webhook:
        return cls(data.get("url_file"), data.get("url_env"), data.get("channel"), tuple(data.get("events", ())),
                   data.get("url"))


@dataclass(frozen=True)
class NotifyConfig:
    """A campaign's notification channels: ``main`` (shifters) and ``dev`` (experts, development)."""

    main: Optional[Webhook] = None
    dev: Optional[Webhook] = None
    username: str = "ecalstate"
    #: base URL of the shifters' web view (``ecalstate serve``): each message links the instance it names
    view_url: Optional[str] = None

    def __post_init__(self) -> None:
        if self.main is None and self.dev is None:
            raise Invalid("configure at least one webhook (main or dev)")
        if self.view_url is not None and not re.match(r"^https?://[^\s?#]+$", self.view_url):
            raise Invalid(f"the view URL must be an http:// or https:// address without query, got {self.view_url!r}")

    def channels(self) -> list[tuple[str, Webhook]]:
        return [(name, hook) for name, hook in (("main", self.main), ("dev", self.dev)) if hook is not None]

    def to_dict(self) -> dict[str, Any]:
        view = {"view_url": self.view_url} if self.view_url else {}
        return {"username": self.username, **view, **{name: hook.to_dict() for name, hook in self.channels()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NotifyConfig:
        hooks = {name: Webhook.from_dict(data[name]) for name in CHANNELS if data.get(name)}
        return cls(hooks.get("main"), hooks.get("dev"), data.get("username", "ecalstate"), data.get("view_url"))


@dataclass(frozen=True)
class NotifyEvent:
    """Something to tell a channel, derived from one audit row."""

    audit_id: int
    ts: str
    kind: str
    task: str
    run_number: Optional[int]
    jid: Optional[int]
    reason: str
    attempts: Optional[int] = None
    max_retries: Optional[int] = None
    #: what needs action (kind ``attention``): the level it reached (``clear``: it is gone) and the one before, the
    #: reason's words and the command that resolves it
    level: str = ""
    before: Optional[str] = None
    message: str = ""
    command: str = ""


@dataclass(frozen=True)
class Reservation:
    """A sender's hold on a channel's events up to ``upto`` (token: whose); another sender leaves them alone."""

    campaign: str
    channel: str
    token: str
    start: int
    upto: int
    events: list[NotifyEvent]


def cursor_target(campaign: str, channel: str) -> str:
    return f"notify:{campaign}:{channel}"


def _seen_key(campaign: str, channel: str) -> str:
    return f"notify.seen:{campaign}:{channel}"


def _sending_key(campaign: str, channel: str) -> str:
    return f"notify.sending:{campaign}:{channel}"


def _events(rows: list[Any]) -> list[NotifyEvent]:
    events = []
    for audit_id, ts, entity, task, run, jid, reason, retries, attempts, before, after, detail in rows:
        if entity == "attention":
            data = json.loads(detail) if detail else {}
            events.append(NotifyEvent(audit_id, ts, "attention", task, run, jid, reason, level=after, before=before,
                                      message=str(data.get("message") or ""), command=str(data.get("command") or "")))
            continue
        kinds = ["failed"] if entity == "task" else ["job-failed"]
        if entity == "job" and retries is not None and attempts > retries:
            kinds.append("retries")
        events += [NotifyEvent(audit_id, ts, k, task, run, jid, reason, attempts, retries) for k in kinds]
    return events


def _read_events(tx: Any, cid: int, start: int, limit: int) -> tuple[list[Any], int]:
    """The event rows after ``start`` (at most ``limit``) and the audit id a cursor may move to past them."""
    rows = tx.all(EVENTS_SQL, (cid, start, IMPORT_ACTOR, limit))
    upto = rows[-1][0] if len(rows) == limit else int(tx.scalar("SELECT COALESCE(MAX(id), 0) FROM audit"))
    return rows, max(upto, start)


def _loads(text: Optional[str]) -> dict[str, Any]:
    try:
        data = json.loads(text) if text else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


class NotifySettings:
    """The notifier's configuration and progress in a store: a wing that keeps them in the core's campaign
    settings, audit bookmarks and heartbeats, through the store's public seams."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def config(self, campaign: str) -> Optional[NotifyConfig]:
        with self.store.db.tx(write=False) as tx:
            data = campaign_settings(tx, campaign_id(tx, campaign)).get("notify")
        return None if not data else NotifyConfig.from_dict(data)

    def set_config(self, campaign: str, config: Optional[NotifyConfig]) -> None:
        """Store (or with ``None`` remove) a campaign's notification setup; new channels start at the audit's end."""

        def body(ctx: Ctx) -> None:
            cid = campaign_id(ctx.tx, campaign)
            if config is None:
                drop_cursors(ctx, [cursor_target(campaign, c) for c in CHANNELS])
                for channel in CHANNELS:
                    write_mark(ctx, _seen_key(campaign, channel), None)
                forget_heartbeats(ctx, cid, NOTIFIER)
            else:
                end = ctx.tx.scalar("SELECT COALESCE(MAX(id), 0) FROM audit")
                for name, _ in config.channels():
                    target = cursor_target(campaign, name)
                    if read_cursor(ctx.tx, target) is None:
                        move_cursor(ctx, target, end)
            set_campaign_setting(ctx, cid, "notify", None if config is None else config.to_dict())

        self.store.write("notify.config", body)

    def events(self, campaign: str, channel: str, limit: int = 1000) -> tuple[list[NotifyEvent], int]:
        """Events after the channel's cursor (at most ``limit`` audit rows) and the audit id to advance it to."""
        with self.store.db.tx(write=False) as tx:
            cid = campaign_id(tx, campaign)
            start = read_cursor(tx, cursor_target(campaign, channel)) or 0
            rows, upto = _read_events(tx, cid, start, limit)
        return _events(rows), upto

    def reserve(self, campaign: str, channel: str, lease: float, limit: int = 1000) -> Optional[Reservation]:
        """Hold the channel's events after its cursor, in one write transaction, before posting them: a concurrent
        sender finds the hold and leaves them (None), so no event is told twice. A hold older than ``lease``
        seconds was left by a sender that died: it is taken over."""
        token = secrets.token_hex(8)

        def body(ctx: Ctx) -> Optional[Reservation]:
            cid = campaign_id(ctx.tx, campaign)
            ctx.tx.serialize("notify", f"{campaign}:{channel}")
            held = _loads(read_mark(ctx.tx, _sending_key(campaign, channel)))
            if held and seconds_between(str(held.get("at")), ctx.now) < max(lease, MIN_LEASE):
                return None
            start = read_cursor(ctx.tx, cursor_target(campaign, channel)) or 0
            rows, upto = _read_events(ctx.tx, cid, start, limit)
            write_mark(ctx, _sending_key(campaign, channel), json.dumps({"token": token, "upto": upto, "at": ctx.now}))
            return Reservation(campaign, channel, token, start, upto, _events(rows))

        return self.store.write("notify.reserve", body)

    def release(self, held: Reservation, delivered: bool, seen: Optional[Mapping[str, str]] = None) -> None:
        """End a hold: delivered, the cursor moves past its events (and the health problems told are kept);
        not delivered, they stay pending for the next sender. A hold taken over meanwhile is left to its taker."""

        def body(ctx: Ctx) -> None:
            campaign_id(ctx.tx, held.campaign)
            ctx.tx.serialize("notify", f"{held.campaign}:{held.channel}")
            mine = _loads(read_mark(ctx.tx, _sending_key(held.campaign, held.channel))).get("token") == held.token
            if not mine:
                return
            if delivered:
                move_cursor(ctx, cursor_target(held.campaign, held.channel), held.upto, forward_only=False)
                if seen is not None:
                    write_mark(ctx, _seen_key(held.campaign, held.channel), json.dumps(dict(seen), sort_keys=True))
            write_mark(ctx, _sending_key(held.campaign, held.channel), None)

        self.store.write("notify.release", body)

    def seen(self, campaign: str, channel: str) -> dict[str, str]:
        """Health problems already told to this channel: key -> the words it was told in."""
        with self.store.db.tx(write=False) as tx:
            value = read_mark(tx, _seen_key(campaign, channel))
        seen = json.loads(value) if value else {}
        return seen if isinstance(seen, dict) else dict.fromkeys(seen, "")  # earlier versions kept the keys only

    def heartbeat(self, campaign: str, ok: bool, message: str) -> None:
        """Record a notifier run; a failed delivery shows in ``health`` as a failing ``@notify`` stage."""
        self.store.write("heartbeat", lambda ctx: record_heartbeat(
            ctx, campaign_id(ctx.tx, campaign), NOTIFIER, NOTIFIER_STAGE, ok, message))
