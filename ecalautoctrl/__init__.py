"""The original framework's import name, so that scripts written for ecalautoctrl run unchanged.

``from ecalautoctrl import JobCtrl, RunCtrl, TaskHandler, QueryOMS`` gives ecalstate's compat layer
(:mod:`ecalstate.compat`): the same names and call shapes, over the transactional store. The original's command
lines are installed too, as the console scripts ``ecalrunctrl.py`` and ``ecalautomation.py``.
docs/migration.md lists what differs.
"""

from ecalstate.compat import JobCtrl, QueryOMS, RunCtrl, TaskHandler

__all__ = ["JobCtrl", "QueryOMS", "RunCtrl", "TaskHandler"]
