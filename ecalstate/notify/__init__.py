"""Webhook notifications (Mattermost/Slack) of failures and health problems: a wing over the store.

:mod:`.settings` keeps each campaign's channels and what they were told, in the store; :mod:`.sender` derives
messages from the audit after each channel's bookmark and delivers them. ``ecalstate notify`` is its command line.
"""

from .sender import deliver, read_url_file, send_test, status, webhook
from .settings import CHANNELS, DEFAULT_EVENTS, EVENTS, NOTIFIER, NotifyConfig, NotifyEvent, NotifySettings, Webhook

__all__ = ["CHANNELS", "DEFAULT_EVENTS", "EVENTS", "NOTIFIER", "NotifyConfig", "NotifyEvent", "NotifySettings",
           "Webhook", "deliver", "read_url_file", "send_test", "status", "webhook"]
