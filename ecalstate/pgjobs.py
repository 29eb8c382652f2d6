"""One job transition in one round trip on PostgreSQL (issue 14).

Through the generic path a job transition is about eight requests to the server (begin, the store's time, names,
the job locked, three writes, the completion check, commit), and on PostgreSQL each is a network round trip: the
API ran at a quarter of a raw client's speed. Here the same transition is one statement in its own transaction:
``SELECT * FROM ecalstate_set_job(...)``, a PL/pgSQL function doing what ``jobs._apply`` does for one job
without fields, in the same order and under the same locks. The decisions stay Python's: the transition table
arrives as data (the statuses a target may be reached from), the refusal messages are made here; the function
only says what it found. Each statement of a function takes a new snapshot, so the completion tally, run after
the instance's row lock, sees a job another transaction finished meanwhile (two last jobs finishing together
decide their instance once). tests/test_one_job.py holds it to the generic path: same outcomes, refusals, rows.
"""

from __future__ import annotations

from typing import Any, Optional

from .auditlog import TS_TEXT, VOCABULARY, vocab_id
from .db import Tx
from .errors import NotFound
from .results import Change
from .statemachine import JOB, JobStatus, TaskStatus, TransitionNotAllowed, decision_sql, job_refusal

#: the statuses each job status may be reached from, as the table says (the function gets them as data)
SOURCES = {t.value: ",".join(s.value for s in JobStatus if JOB.is_allowed(s, t)) for t in JobStatus}


#: the rule that decides an instance from its jobs (``statemachine.DECISIONS``), over the function's variables
_DECIDED, _DECIDED_REASON = decision_sql({"total": "v_total", "done": "v_done", "active": "v_active",
                                          "exhausted": "v_exhausted", "retries": "v_job.max_retries"})

#: the vocabulary as a PostgreSQL array: a status's id is its position (``auditlog.VOCABULARY``)
_VOCABULARY = "ARRAY[" + ", ".join(f"'{t}'" for t in VOCABULARY) + "]::text[]"

FUNCTIONS = f"""
CREATE OR REPLACE FUNCTION ecalstate_text_id(t text) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE found integer;
BEGIN
  SELECT s.id INTO found FROM string s WHERE md5(s.text) = md5(t) AND s.text = t;
  IF found IS NULL THEN
    INSERT INTO string (text) VALUES (t) ON CONFLICT DO NOTHING RETURNING id INTO found;
    IF found IS NULL THEN  -- another transaction committed the same text meanwhile
      SELECT s.id INTO found FROM string s WHERE md5(s.text) = md5(t) AND s.text = t;
    END IF;
  END IF;
  RETURN found;
END $$;

-- p_sources: the statuses p_to may be reached from, comma-separated; p_*_id: the string ids of the task name,
-- actor, identity and reason the client knows (NULL: looked up here). Scalars only: a client encodes an array
-- parameter at a cost comparable to the whole statement's
CREATE OR REPLACE FUNCTION ecalstate_set_job(
  p_campaign text, p_task text, p_run bigint, p_jid bigint, p_generation integer, p_to text, p_sources text,
  p_actor text, p_identity text, p_reason text, p_task_id integer, p_actor_id integer, p_identity_id integer,
  p_reason_id integer, p_clock bigint, p_complete boolean)
RETURNS TABLE (outcome text, status text, attempts integer, max_retries integer, decided text, decided_reason text,
               ids integer[])
LANGUAGE plpgsql AS $$
DECLARE
  v_job record; v_now bigint; v_text text; v_retry boolean;
  v_ids integer[] := ARRAY[p_task_id, p_actor_id, p_identity_id, p_reason_id];
  v_texts text[] := ARRAY[p_task, p_actor, p_identity, p_reason];
  v_total bigint; v_done bigint; v_active bigint; v_exhausted bigint; v_version integer; v_gen integer;
BEGIN
  SELECT j.id, j.status, j.version, j.attempts, j.generation, ti.id AS iid, ti.generation AS current, c.id AS cid,
         t.max_retries
    INTO v_job
    FROM campaign c JOIN task t ON t.campaign_id = c.id AND t.name = p_task
    JOIN task_instance ti ON ti.task_id = t.id JOIN run r ON r.id = ti.run_id
    JOIN job j ON j.instance_id = ti.id AND j.generation = COALESCE(p_generation, ti.generation) AND j.jid = p_jid
    WHERE c.name = p_campaign AND r.run_number = p_run
    FOR UPDATE OF j;
  IF NOT FOUND THEN  -- which name is unknown: the client says so
    RETURN QUERY SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM campaign WHERE name = p_campaign) THEN 'no campaign'
      WHEN NOT EXISTS (SELECT 1 FROM campaign c JOIN task t ON t.campaign_id = c.id
                       WHERE c.name = p_campaign AND t.name = p_task) THEN 'no task' ELSE 'no job' END,
      NULL::text, NULL::integer, NULL::integer, NULL::text, NULL::text, NULL::integer[];
    RETURN;
  END IF;
  IF v_job.status = p_to THEN
    RETURN QUERY SELECT 'unchanged', v_job.status::text, v_job.attempts, v_job.max_retries, NULL::text, NULL::text,
      NULL::integer[];
    RETURN;
  END IF;
  v_retry := v_job.status = 'failed' AND p_to = 'idle';
  IF NOT (v_job.status = ANY(string_to_array(p_sources, ','))) OR (v_retry AND v_job.attempts > v_job.max_retries) THEN
    RETURN QUERY SELECT 'refused', v_job.status::text, v_job.attempts, v_job.max_retries, NULL::text, NULL::text,
      NULL::integer[];
    RETURN;
  END IF;
  FOR i IN 1..4 LOOP
    IF v_ids[i] IS NULL THEN v_ids[i] := ecalstate_text_id(v_texts[i]); END IF;
  END LOOP;
  v_now := GREATEST(p_clock, COALESCE((SELECT a.ts + 1 FROM audit_log a ORDER BY a.id DESC LIMIT 1), p_clock));
  UPDATE job SET status = p_to, version = job.version + 1,
      attempts = job.attempts + CASE WHEN v_retry THEN 1 ELSE 0 END,
      batch_id = CASE WHEN v_retry THEN NULL ELSE job.batch_id END, updated_at = v_now,
      started_at = CASE WHEN p_to = 'idle' THEN NULL WHEN p_to = 'running' THEN COALESCE(job.started_at, v_now)
                        ELSE job.started_at END,
      finished_at = CASE WHEN p_to IN ('done', 'failed') THEN v_now ELSE job.finished_at END
    WHERE job.id = v_job.id;
  INSERT INTO audit_log (ts, campaign_id, entity, instance_id, job_pk, task, run_number, jid, generation,
                         from_status, to_status, actor, identity, reason, request_id, detail)
    VALUES (v_now, v_job.cid, {vocab_id("job")}, v_job.iid, v_job.id, v_ids[1], p_run, p_jid, v_job.generation,
            array_position({_VOCABULARY}, v_job.status::text), array_position({_VOCABULARY}, p_to), v_ids[2],
            v_ids[3], v_ids[4], NULL, NULL);
  IF p_complete AND v_job.generation = v_job.current AND p_to IN ('done', 'failed') THEN
    -- two transactions finishing the last two jobs of one instance: the later one waits here, and its tally (a
    -- statement of its own, a new snapshot) sees the earlier one's job
    PERFORM 1 FROM task_instance WHERE id = v_job.iid FOR UPDATE;
    SELECT ti.version, ti.generation, COUNT(*), COUNT(*) FILTER (WHERE j.status = 'done'),
           COUNT(*) FILTER (WHERE j.status IN ('idle', 'running')),
           COUNT(*) FILTER (WHERE j.status = 'failed' AND j.attempts > v_job.max_retries)
      INTO v_version, v_gen, v_total, v_done, v_active, v_exhausted
      FROM task_instance ti JOIN job j ON j.instance_id = ti.id AND j.generation = ti.generation
      WHERE ti.id = v_job.iid AND ti.status = 'processing' GROUP BY ti.version, ti.generation;
    decided := {_DECIDED};  -- statemachine.DECISIONS, generated: NULL while the jobs decide nothing
    IF v_total IS NOT NULL AND decided IS NOT NULL THEN
      v_text := {TS_TEXT["postgresql"].format(c="v_now")};  -- task_instance keeps text times
      decided_reason := {_DECIDED_REASON};
      UPDATE task_instance SET status = decided, version = task_instance.version + 1, updated_at = v_text,
          outputs = CASE WHEN decided = 'done' THEN '' ELSE '{{}}' END
        WHERE id = v_job.iid AND version = v_version;
      INSERT INTO audit_log (ts, campaign_id, entity, instance_id, job_pk, task, run_number, jid, generation,
                             from_status, to_status, actor, identity, reason, request_id, detail)
        VALUES (v_now, v_job.cid, {vocab_id("task")}, v_job.iid, NULL, v_ids[1], p_run, NULL, v_gen,
                {vocab_id("processing")}, array_position({_VOCABULARY}, decided), v_ids[2], v_ids[3],
                ecalstate_text_id(decided_reason), NULL, NULL);
    END IF;
  END IF;
  outcome := 'changed'; status := v_job.status; attempts := v_job.attempts; max_retries := v_job.max_retries;
  ids := v_ids;
  RETURN NEXT;
END $$;
"""


def install(tx: Tx) -> None:
    """Create the functions (PostgreSQL only) unless they are there."""
    if not tx.is_sqlite and not tx.exists("ecalstate_set_job"):
        tx.script(FUNCTIONS)


def set_job(
    tx: Tx, campaign: str, task: str, run: int, jid: int, status: JobStatus, reason: str, generation: Optional[int],
    actor: str, identity: str, known: dict[str, int], clock_us: int, complete: bool,
) -> list[Change]:
    """One job transition in one statement (``tx`` in autocommit: the statement is its transaction); the job's
    change, then its instance's when it decided it. The ids of the task name, actor, identity (as audited) and
    reason come from ``known`` (committed ids, which this call adds to) or are looked up by the function.
    Refusals raise as the generic path's do."""
    words = (task, actor, identity, reason)
    row: Any = tx.one(
        "SELECT * FROM ecalstate_set_job(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (campaign, task, run, jid, generation, status.value, SOURCES[status.value], actor, identity, reason,
         *(known.get(w) for w in words), clock_us, complete),
    )
    outcome, current, attempts, retries, decided, why, ids = row
    if ids is not None:  # committed with the statement
        known.update(zip(words, ids))
    if outcome == "no campaign":
        raise NotFound(f"unknown campaign {campaign!r}")
    if outcome == "no task":
        raise NotFound(f"unknown task {task!r} in campaign {campaign!r}")
    if outcome == "no job":
        raise NotFound(f"no job {jid} for task {task!r} run {run} in campaign {campaign!r}")
    key = f"{task} run {run} job {jid}" + (f" gen {generation}" if generation is not None else "")
    if outcome == "refused":
        before = JobStatus(current)
        raise TransitionNotAllowed("job", key, before, status, JOB.allowed(before),
                                   job_refusal(before, status, attempts, retries))
    if outcome == "unchanged":
        return [Change("job", key, current, status.value, "unchanged")]
    changes = [Change("job", key, current, status.value, "changed", reason)]
    if decided is not None:
        changes.append(Change("task", f"{task} run {run}", TaskStatus.PROCESSING.value, decided, "changed", why))
    return changes
