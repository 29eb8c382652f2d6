"""Activating tasks the original's way: naming them in a run type.

The original had no task declaration: ``ecalrunctrl.py rtype-update --campaign C --add task1`` was all it took
for runs of that type to get ``task1``. ecalstate declares tasks (dependencies, retry limit), so a task named here
that the campaign does not have yet is declared first, with no dependency and the default retry limit
(``ecalstate task update`` changes them). Everything is checked before the first write, so a refused call
(unknown campaign or run type, a bad name) writes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..catalog import check_name
from ..errors import Invalid, NotFound
from ..store import Store


@dataclass(frozen=True)
class Activation:
    """What ``activate_tasks`` did: tasks declared for it, tasks the run type activates from now on."""

    campaign: str
    rtype: str
    created: bool
    declared: list[str]
    added: list[str]
    instances: int


def activate_tasks(store: Store, campaign: str, rtype: str, tasks: Sequence[str], create: bool = False) -> Activation:
    """Add ``tasks`` to run type ``rtype`` (created first with ``create``: no filter, every run), declaring the
    tasks the campaign lacks. Runs injected later get the tasks; the runs already there keep theirs."""
    names = [check_name("task", t) for t in dict.fromkeys(tasks)]
    check_name("run type", rtype)
    rtypes = {r.name: r for r in store.list_rtypes(campaign)}  # an unknown campaign is refused here
    if create and rtype in rtypes:
        raise Invalid(f"run type {rtype!r} already exists in campaign {campaign!r}")
    if not create and rtype not in rtypes:
        raise NotFound(f"unknown run type {rtype!r} in campaign {campaign!r}: rtype-create --campaign {campaign} "
                       f"--type {rtype} creates it")
    known = {t.name for t in store.list_tasks(campaign)}
    declared = [t for t in names if t not in known]
    for name in declared:
        store.add_task(campaign, name)
    if create:
        store.create_rtype(campaign, rtype, "", names)
        return Activation(campaign, rtype, True, declared, names, 0)
    before = set(rtypes[rtype].tasks)
    result = store.update_rtype(campaign, rtype, add=names)
    return Activation(campaign, rtype, False, declared, [t for t in names if t not in before], result.instances)
