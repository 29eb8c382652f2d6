"""A task's inputs from another campaign: a test campaign runs a new task on production's runs, read only.

``ecalstate task add -c test timing --depends-on phisym-reco --inputs-from prompt`` declares that ``timing`` of
campaign ``test`` depends on ``phisym-reco`` of campaign ``prompt`` (its :class:`~ecalstate.results.TaskSettings`
say so; no ``task_dep`` row, which joins tasks of one campaign). Its instance of run R is eligible when prompt's
``phisym-reco`` is done for R (or R is merged into a done leader): the claim reads prompt's rows, never locks or
writes them. A workflow reads the inputs with ``TaskHandler.outputs``, from prompt. The test campaign has its own
runs (``run inject --from-campaign prompt`` copies them) and its own history; prompt's reprocessing does not
cascade into it (reprocess the test campaign's task yourself).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Optional

from .base import campaign_id, task_of
from .db import Tx
from .errors import Invalid
from .limits import chunks
from .results import TaskSettings

#: an input task done for the run, or the run merged into a leader whose input task is done (the claim rule)
_DONE = "(u.status = 'done' OR (u.status = 'merged' AND ul.status = 'done'))"
#: the claim's condition for one input task (parameters: its campaign id, its task id)
ELIGIBLE_CLAUSE = (" AND EXISTS (SELECT 1 FROM run ur JOIN task_instance u ON u.run_id = ur.id"
                   " LEFT JOIN task_instance ul ON ul.id = u.leader_id"
                   f" WHERE ur.campaign_id = ? AND ur.run_number = r.run_number AND u.task_id = ? AND {_DONE})")


@dataclass(frozen=True)
class Inputs:
    """Where a task's inputs are: another campaign (its id and name) and that campaign's tasks (name, id)."""

    campaign_id: int
    campaign: str
    tasks: tuple[tuple[str, int], ...]

    def clause(self) -> tuple[str, list[Any]]:
        """The claim's SQL condition (on the claimed instance's run ``r``) and its parameters."""
        params: list[Any] = []
        for _, tid in self.tasks:
            params += [self.campaign_id, tid]
        return ELIGIBLE_CLAUSE * len(self.tasks), params

    def waits(self, tx: Tx, runs: Sequence[int]) -> dict[int, str]:
        """For each of ``runs`` not ready, its first input task not done: ``"prompt/reco processing"``, ``"prompt/reco
        missing"`` (no instance, or no such run there), ``"prompt/reco merged into a failed run"``."""
        ids = {tid: name for name, tid in self.tasks}
        found: dict[tuple[int, str], str] = {}
        for chunk in chunks(sorted(set(runs))):
            marks = ",".join("?" * len(chunk))
            for run, tid, status, leader in tx.all(
                    "SELECT ur.run_number, u.task_id, u.status, ul.status FROM run ur JOIN task_instance u"
                    " ON u.run_id = ur.id LEFT JOIN task_instance ul ON ul.id = u.leader_id WHERE ur.campaign_id = ?"
                    f" AND ur.run_number IN ({marks}) AND u.task_id IN ({','.join('?' * len(ids))})",
                    (self.campaign_id, *chunk, *ids)):
                found[(run, ids[tid])] = status if status != "merged" else f"merged into a {leader or 'missing'} run"
        out: dict[int, str] = {}
        for run in runs:
            for name in sorted(ids.values()):
                state = found.get((run, name), "missing")
                if state not in ("done", "merged into a done run"):
                    out[run] = f"{self.campaign}/{name} {state}"
                    break
        return out


def inputs_of(tx: Tx, task_id: int) -> Optional[Inputs]:
    """The inputs a task takes from another campaign (its settings), or None: its dependencies are its campaign's."""
    settings = TaskSettings.from_json(tx.scalar("SELECT settings FROM task WHERE id = ?", (task_id,)))
    if settings.inputs_from is None:
        return None
    return resolve_inputs(tx, settings.inputs_from, settings.inputs)


def resolve_inputs(tx: Tx, campaign: str, tasks: Sequence[str]) -> Inputs:
    """``campaign`` and its ``tasks``, checked to exist (the error names what is missing)."""
    cid = campaign_id(tx, campaign)
    return Inputs(cid, campaign, tuple((name, task_of(tx, cid, campaign, name)[0]) for name in tasks))


def declare_inputs(tx: Tx, campaign: str, source: str, tasks: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """Check a task of ``campaign`` may take its inputs from ``tasks`` of campaign ``source``: the settings' value."""
    if source == campaign:
        raise Invalid(f"--inputs-from names the task's own campaign {campaign!r}: give its dependencies with"
                      " --depends-on alone")
    if not tasks:
        raise Invalid(f"--inputs-from {source} needs --depends-on: the tasks of {source!r} whose outputs this task"
                      " reads")
    names = tuple(dict.fromkeys(tasks))
    for name, tid in resolve_inputs(tx, source, names).tasks:
        if inputs_of(tx, tid) is not None:
            raise Invalid(f"task {name!r} of campaign {source!r} takes its own inputs from another campaign: depend"
                          " on the campaign that makes them")
    return source, names


def with_inputs(settings: TaskSettings, source: Optional[str], tasks: Sequence[str]) -> TaskSettings:
    """``settings`` with these inputs (None: the task's dependencies are its own campaign's)."""
    return replace(settings, inputs_from=source, inputs=tuple(tasks) if source is not None else ())


def input_waits(tx: Tx, cid: int) -> list[tuple[str, int, str, str, str]]:
    """The instances not claimed yet (new, reprocess) of the campaign's tasks that take inputs from another campaign,
    whose inputs are not done there, for the attention model to name: (task, run, status, what it waits for as
    :meth:`Inputs.waits` says it, since its last change). Nothing cascades across campaigns, so a skipped input is
    found here or nowhere."""
    out: list[tuple[str, int, str, str, str]] = []
    for tid, name, text in tx.all("SELECT id, name, settings FROM task WHERE campaign_id = ? ORDER BY id", (cid,)):
        settings = TaskSettings.from_json(text)  # read with the tasks: most campaigns take no inputs elsewhere
        if settings.inputs_from is None:
            continue
        inputs = resolve_inputs(tx, settings.inputs_from, settings.inputs)
        pending = {r[0]: (r[1], r[2]) for r in tx.all(
            "SELECT r.run_number, ti.status, ti.updated_at FROM task_instance ti JOIN run r ON r.id = ti.run_id"
            " WHERE ti.task_id = ? AND ti.status IN ('new', 'reprocess')", (tid,))}
        out += [(name, run, pending[run][0], waiting, pending[run][1])
                for run, waiting in sorted(inputs.waits(tx, list(pending)).items())]
    return out
