"""``ecalstate notify``: per-campaign webhook notifications (set up, show, send, test, clear)."""

from __future__ import annotations

from typing import Any, Optional

import click

from ..notify import DEFAULT_EVENTS, EVENTS, NotifyConfig, NotifySettings, deliver, send_test, status, webhook
from .app import App, pass_app
from .fmt import echo_table, printable
from .options import campaign_option, multi_option, optional_campaign_option, silent_after_option, stuck_after_option

_EVENTS_HELP = f"Events to send ({', '.join(EVENTS)})"


@click.group()
def notify() -> None:
    """Webhook notifications (Mattermost/Slack) of failures and health problems.

    Webhook URLs are secrets: read from a file or an environment variable,
    never printed. Sending runs after the fact from the audit, so a webhook
    that is down never blocks a state change; it shows in `ecalstate health`.

    \b
    Example:
        ecalstate notify set -c prompt --webhook-url-file ~/.mm-hook --dev-webhook-url-env MM_DEV_HOOK
        ecalstate notify send -c prompt
    """


@notify.command("set")
@campaign_option
@click.option("--webhook-url-file", type=click.Path(dir_okay=False), help="File holding the main webhook URL.")
@click.option("--webhook-url-env", metavar="VAR",
              help="Environment variable holding the main webhook URL when sending.")
@click.option("--channel", metavar="NAME", help="Channel the main webhook posts to (else the webhook's own).")
@multi_option("--on", help=_EVENTS_HELP + f" to the main channel [default: {','.join(DEFAULT_EVENTS['main'])}].",
              metavar="EVENT")
@click.option("--dev-webhook-url-file", type=click.Path(dir_okay=False),
              help="File holding the development webhook URL.")
@click.option("--dev-webhook-url-env", metavar="VAR", help="Environment variable holding the development webhook URL.")
@click.option("--dev-channel", metavar="NAME", help="Channel the development webhook posts to.")
@multi_option("--dev-on",
              help=_EVENTS_HELP + f" to the development channel [default: {','.join(DEFAULT_EVENTS['dev'])}].",
              metavar="EVENT")
@click.option("--username", default="ecalstate", show_default=True, help="Name the messages are posted under.")
@click.option("--view-url", metavar="URL",
              help="Base URL of the shifters' view (ecalstate serve, behind the site's proxy): messages link each "
                   "instance's page.")
@pass_app
def notify_set(app: App, campaign: str, webhook_url_file: Optional[str], webhook_url_env: Optional[str],
               channel: Optional[str], on: list[str], dev_webhook_url_file: Optional[str],
               dev_webhook_url_env: Optional[str], dev_channel: Optional[str], dev_on: list[str], username: str,
               view_url: Optional[str]) -> None:
    """Set up (replace) the notifications of a campaign; events from now on are sent.

    \b
    Example:
        ecalstate notify set -c prompt --webhook-url-file /run/secrets/mm-hook --on failed,retries,health \\
            --dev-webhook-url-file /run/secrets/mm-dev-hook --dev-on job-failed,health \\
            --view-url https://ecal-shift.cern.ch
    """
    config = NotifyConfig(
        webhook(webhook_url_file, webhook_url_env, channel, on, DEFAULT_EVENTS["main"]),
        webhook(dev_webhook_url_file, dev_webhook_url_env, dev_channel, dev_on, DEFAULT_EVENTS["dev"]),
        username, view_url,
    )
    NotifySettings(app.store()).set_config(campaign, config)
    _show(app, campaign)


@notify.command("show")
@campaign_option
@pass_app
def notify_show(app: App, campaign: str) -> None:
    """Show a campaign's notification channels (without their URLs) and what is pending.

    \b
    Example:
        ecalstate notify show -c prompt
    """
    _show(app, campaign)


def _show(app: App, campaign: str) -> None:
    info = status(app.store(), campaign)

    def text() -> None:
        if not info["configured"]:
            click.echo(f"campaign {campaign}: no notifications configured")
            return
        click.echo(f"campaign {campaign}: notifications as {info['username']}")
        echo_table(["channel", "url", "posts to", "events", "pending"],
                   [[c["channel"], c["url"], c["mattermost_channel"], ",".join(c["events"]), c["pending"]]
                    for c in info["channels"]], "")

    app.emit(info, text)


@notify.command("send")
@optional_campaign_option
@stuck_after_option
@silent_after_option
@click.option("--timeout", type=click.FloatRange(0.1, 60), default=5.0, show_default=True,
              help="Seconds to wait for a webhook, per attempt.")
@click.option("--retries", type=click.IntRange(0, 10), default=2, show_default=True,
              help="Retries of a failed delivery (1 s, 2 s, 4 s... apart).")
@pass_app
def notify_send(app: App, campaign: Optional[str], stuck_after: float, silent_after: float, timeout: float,
                retries: int) -> None:
    """Send what each channel has not been told yet; exit 1 if a webhook could not be reached.

    What needs action (the task instances health names, with their commands) is recorded first, and each instance,
    reason and level is told once, also when several senders (or health) run at once: a sender holds a channel's
    events while it posts them. Undelivered notifications stay pending and are sent by the next run.

    \b
    Example:
        ecalstate notify send -c prompt --stuck-after 12h --silent-after 1h
    """
    store = app.store()
    names = [campaign] if campaign else [c.name for c in store.list_campaigns()]
    given = click.get_current_context().get_parameter_source("stuck_after") == click.core.ParameterSource.COMMANDLINE
    results = [d for name in names for d in deliver(store, name, stuck_after if given else None, silent_after,
                                                      timeout, retries)]

    def text() -> None:
        for d in results:
            sent = ("busy: another sender is telling this channel right now" if d.busy else
                    f"{d.events} event(s), {d.problems} health problem(s) sent")
            failed = f"NOT delivered ({printable(d.error or '')}), {d.pending} pending"
            click.echo(f"{d.campaign} {d.channel}: " + (sent if d.ok else failed))

    app.emit(results, text)
    if any(not d.ok for d in results):
        raise click.ClickException("some notifications were not delivered; they stay pending")


@notify.command("test")
@campaign_option
@click.option("--dev", is_flag=True, help="Test the development channel instead of the main one.")
@pass_app
def notify_test(app: App, campaign: str, dev: bool) -> None:
    """Post a test message to a campaign's channel.

    \b
    Example:
        ecalstate notify test -c prompt --dev
    """
    channel = "dev" if dev else "main"
    send_test(app.store(), campaign, channel)
    result: dict[str, Any] = {"campaign": campaign, "channel": channel, "sent": True}
    app.emit(result, f"test message sent to the {channel} channel of campaign {campaign}")


@notify.command("clear")
@campaign_option
@pass_app
def notify_clear(app: App, campaign: str) -> None:
    """Remove a campaign's notifications (configuration, cursors, notifier heartbeat).

    \b
    Example:
        ecalstate notify clear -c prompt
    """
    NotifySettings(app.store()).set_config(campaign, None)
    app.emit({"campaign": campaign, "configured": False}, f"campaign {campaign}: notifications removed")
