"""What an instance's outputs are: its jobs' ``output`` and ``plots`` fields, or what was kept of them.

A done instance stores :data:`DERIVED` and its outputs are read from its current generation's jobs when asked
(schema 6: a copy of every path in every instance was a fifth of a year's file); an instance whose generation
was superseded keeps the text of what its jobs gave. Readers of every layer (queries, the schema migration that
introduced this, the drop-in) ask here.
"""

from __future__ import annotations

import json
from typing import Any

from .db import Tx

#: the job fields that are outputs, in the original's getOutput order
OUTPUT_KEYS = ("output", "plots")

#: ``task_instance.outputs`` of a done instance: its current generation's jobs' outputs, read when asked
DERIVED = ""


def instance_outputs(tx: Tx, iid: int, generation: int, stored: str) -> dict[str, Any]:
    """An instance's outputs: as stored, or (:data:`DERIVED`) gathered from its current generation's jobs."""
    return _outputs(tx, iid, generation) if stored == DERIVED else _loads(stored)


def gathered_outputs(tx: Tx, iid: int, generation: int) -> str:
    """The outputs of a generation's jobs as stored text (what schema 5 kept in every done instance)."""
    return json.dumps(_outputs(tx, iid, generation), sort_keys=True)


def _outputs(tx: Tx, iid: int, gen: int) -> dict[str, str]:
    """The jobs' ``output``/``plots`` fields, comma-joined in job order, as the original's getOutput gave them."""
    gathered: dict[str, list[str]] = {k: [] for k in OUTPUT_KEYS}
    for (fields,) in tx.all("SELECT fields FROM job WHERE instance_id = ? AND generation = ? ORDER BY jid", (iid, gen)):
        data = _loads(fields)
        for key in OUTPUT_KEYS:
            if data.get(key) not in (None, ""):
                gathered[key].append(str(data[key]))
    return {k: ",".join(v) for k, v in gathered.items() if v}


def _loads(text: str) -> dict[str, Any]:
    value = json.loads(text) if text else {}
    return value if isinstance(value, dict) else {}
