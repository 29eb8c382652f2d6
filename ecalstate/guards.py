"""What the server checks below admin, beyond privileges (issue 20): the state machines hold under raw SQL.

Privileges say which tables and columns a role may write (``ecalstate.roles``); they cannot say which status may
follow which, nor that a change was audited. A handler's login could move done runs to ``reprocess`` with a plain
UPDATE and leave no audit row. These guards are installed with the roles (a deployment without roles pays
nothing) and apply to every session that is not a member of the admin role:

* ``task_instance`` (a BEFORE trigger) and ``job`` (at commit): a status change outside the transition table, a
  handler's move that only an operator makes, an instance or a job created in another status than its first, a
  job retried beyond its task's retries, attempts or generations that jump, a leader set without a transition;
* the same tables, deferred constraint triggers: at commit the row's newest audit row must end in its status: a
  change without its audit row is refused, whichever statements made it (the writer holds the row's lock, so no
  other transition of it interleaves);
* ``run``: a run's fill and metadata change only while it is being taken (its source's final answer), the run
  types it is exported with never, its run types by a handler only when it ended unmatched;
* row-level policies: the audit takes a role's rows only for the transitions that role makes, in its login's
  name, and a job's creation fields are copied into its creation row only as the job holds them
  (``auditlog.KEEP_CREATION_FIELDS``); ``meta``'s schema version is the admin's; the notifier's bookmarks in
  ``export_cursor`` are not a reader's;
* the exporter's high-water mark (:data:`HIGH_WATER`) waits for audit inserts in flight without a lock, for a
  bounded time: a reader holds no writer up.

Everything is generated from ``statemachine``'s tables: they are data, and the SQL cannot drift from them.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum

from .auditlog import SAME_AS_JOB, TASK_ROWS, vocab_id
from .results import ONGOING
from .statemachine import CLAIMABLE, JOB, TASK, JobStatus, Machine, TaskStatus

T, J = TaskStatus, JobStatus

#: the prefix of every refusal, so that a user (and a test) knows who refused
REFUSED = "ecalstate guard"
#: how long the exporter's high-water mark waits for audit inserts in flight before it gives up (seconds)
HIGH_WATER_WAIT = 10


def pairs(machine: Machine) -> frozenset[tuple[Enum, Enum]]:
    """Every (from, to) the table allows."""
    return frozenset((a, b) for a in machine.statuses for b in machine.table[a])


#: the task transitions a handler makes itself: a claim (a claimable run to processing, or merged into its group),
#: and the end of processing (its jobs decide it, or its submit stage rolls the claim back)
HANDLER_MOVES = frozenset((a, b) for a, b in pairs(TASK)
                          if (a in CLAIMABLE and b in (T.PROCESSING, T.MERGED)) or a == T.PROCESSING)
#: the moves that take an instance up (claimed, or merged into a claimed group): for a gate's instance, an expert's
#: decision (``ecalstate approve|reject``), so an operator's (a gate's settings say ``"gate": true``, as
#: ``TaskSettings.to_json`` writes it; only an operator changes a task's settings)
CLAIMS = frozenset((a, b) for a, b in HANDLER_MOVES if a in CLAIMABLE)
#: the rest of the task table is the operator's (finished work reprocessed, anything skipped)
OPERATOR_MOVES = pairs(TASK) - HANDLER_MOVES


def _quoted(values: Iterable[str]) -> str:
    texts = sorted(values)
    if any("'" in v or "\\" in v for v in texts):  # statuses and their pairs: never, unless the tables change
        raise ValueError(f"a status that SQL would need quoted: {texts}")
    return ", ".join(f"'{v}'" for v in texts)


def _arrows(moves: Iterable[tuple[Enum, Enum]]) -> str:
    """``moves`` as the SQL array of 'from>to' texts a trigger compares ``OLD.status || '>' || NEW.status`` with."""
    return f"ARRAY[{_quoted(f'{a.value}>{b.value}' for a, b in moves)}]::text[]"


def _allowed_from(machine: Machine, column: str) -> str:
    """The statuses ``column``'s status may move to, as text (for the refusal's words)."""
    cases = " ".join(f"WHEN '{s.value}' THEN '{', '.join(sorted(t.value for t in machine.table[s])) or 'none'}'"
                     for s in machine.statuses)
    return f"(CASE {column} {cases} END)"


def _vocab_of(machine: Machine, column: str) -> str:
    """The ``string`` id of ``column``'s status (audit rows keep statuses as their fixed ids)."""
    return f"(CASE {column} {' '.join(f'WHEN {s.value!r} THEN {vocab_id(s.value)}' for s in machine.statuses)} END)"


def _audit_pairs(moves: Iterable[tuple[Enum, Enum]]) -> str:
    return ", ".join(f"({vocab_id(a.value)}, {vocab_id(b.value)})" for a, b in sorted(moves, key=str))


#: an audit row's identity ends in the login the server authenticated, as the store writes it
#: (``StoreBase.identity``: "account@host db:LOGIN"): a login cannot put its rows in another's name
IDENTIFIED = ("EXISTS (SELECT 1 FROM string s WHERE s.id = identity"
              " AND right(s.text, length(session_user) + 3) = 'db:' || session_user)")


def audit_rows(task_moves: Iterable[tuple[Enum, Enum]]) -> str:
    """The audit rows a role may insert, as a row-level policy's condition: in its login's name, handler
    heartbeats; a job's creation, annotation (same status) or transition; an instance's creation or one of
    ``task_moves``."""
    job, task = vocab_id("job"), vocab_id("task")
    return (f"{IDENTIFIED} AND (entity = {vocab_id('handler')}"
            f" OR (entity = {job} AND ((from_status IS NULL AND to_status = {vocab_id(JOB.initial.value)})"
            f" OR from_status = to_status OR (from_status, to_status) IN ({_audit_pairs(pairs(JOB))})))"
            f" OR (entity = {task} AND ((from_status IS NULL AND to_status = {vocab_id(TASK.initial.value)})"
            f" OR (from_status, to_status) IN ({_audit_pairs(task_moves)}))))")


def _functions() -> str:
    """The trigger functions (role names arrive as trigger arguments: one set of functions for any prefix)."""
    operator = "pg_has_role(current_user, TG_ARGV[0], 'MEMBER')"
    task_move = "OLD.status || '>' || NEW.status"
    retry = f"OLD.status = '{J.FAILED.value}' AND NEW.status = '{J.IDLE.value}'"  # job_refusal's retry guard
    label = "ecalstate_instance_label(NEW.task_id, NEW.run_id)"
    return f"""
CREATE OR REPLACE FUNCTION ecalstate_instance_label(p_task bigint, p_run bigint) RETURNS text LANGUAGE sql STABLE AS
$$ SELECT COALESCE((SELECT t.name FROM task t WHERE t.id = p_task), 'task ' || p_task) || ' run '
   || COALESCE((SELECT r.run_number::text FROM run r WHERE r.id = p_run), '?') $$;

CREATE OR REPLACE FUNCTION ecalstate_job_label(p_instance bigint, p_jid bigint, p_generation bigint) RETURNS text
LANGUAGE sql STABLE AS
$$ SELECT 'job ' || p_jid || ' of ' || COALESCE((SELECT ecalstate_instance_label(ti.task_id, ti.run_id)
   FROM task_instance ti WHERE ti.id = p_instance), 'instance ' || p_instance) || ' gen ' || p_generation $$;

-- (the refusals name the row: looked up only when refusing)
CREATE OR REPLACE FUNCTION ecalstate_guard_instance() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    IF NEW.status <> '{TASK.initial.value}' OR NEW.generation <> 0 OR NEW.leader_id IS NOT NULL THEN
      RAISE EXCEPTION '{REFUSED}: task instance %: an instance is created {TASK.initial.value} in generation 0'
        ' without a leader, not % in generation %', {label}, NEW.status, NEW.generation
        USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
  END IF;
  IF NEW.status <> OLD.status THEN
    IF NOT {task_move} = ANY ({_arrows(pairs(TASK))}) THEN
      RAISE EXCEPTION '{REFUSED}: task instance %: % -> % is not in the task table (allowed from %: %)', {label},
        OLD.status, NEW.status, OLD.status, {_allowed_from(TASK, 'OLD.status')} USING ERRCODE = 'check_violation';
    END IF;
    IF {task_move} = ANY ({_arrows(OPERATOR_MOVES)}) AND NOT {operator} THEN
      RAISE EXCEPTION '{REFUSED}: task instance %: % -> % is an operator''s transition (role %)', {label},
        OLD.status, NEW.status, TG_ARGV[0] USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF {task_move} = ANY ({_arrows(CLAIMS)}) AND NOT {operator}
       AND EXISTS (SELECT 1 FROM task t WHERE t.id = NEW.task_id AND t.settings LIKE '%"gate": true%') THEN
      RAISE EXCEPTION '{REFUSED}: task instance %: % -> % decides a gate, an expert''s act (role %)', {label},
        OLD.status, NEW.status, TG_ARGV[0] USING ERRCODE = 'insufficient_privilege';
    END IF;
  END IF;
  IF NEW.generation <> OLD.generation
     AND (NEW.generation <> OLD.generation + 1 OR NEW.status <> '{T.PROCESSING.value}') THEN
    RAISE EXCEPTION '{REFUSED}: task instance %: a generation opens one at a time, for processing (not % -> %'
      ' while %)', {label}, OLD.generation, NEW.generation, NEW.status USING ERRCODE = 'check_violation';
  END IF;
  IF NEW.leader_id IS DISTINCT FROM OLD.leader_id AND NEW.status = OLD.status
     OR NEW.leader_id IS NOT NULL AND NEW.status <> '{T.MERGED.value}' THEN
    RAISE EXCEPTION '{REFUSED}: task instance %: a leader is set by merging into its group, and only then', {label}
      USING ERRCODE = 'check_violation';
  END IF;
  IF NEW.outputs <> OLD.outputs AND OLD.status = '{T.DONE.value}' AND NEW.status = OLD.status THEN
    RAISE EXCEPTION '{REFUSED}: task instance %: the outputs of a done instance change only with its status', {label}
      USING ERRCODE = 'check_violation';
  END IF;
  RETURN NEW;
END $$;

-- a job's rules and its audit row, both at commit: one call per change (a BEFORE trigger cost as much again,
-- measured, and its WHEN clause more than the call it saved: a trigger's WHEN is rebuilt for every statement)
CREATE OR REPLACE FUNCTION ecalstate_guard_job() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  v_instance record;
  v_retries integer;
BEGIN
  IF TG_OP = 'INSERT' THEN
    SELECT status, generation INTO v_instance FROM task_instance WHERE id = NEW.instance_id;
    IF NEW.status <> '{JOB.initial.value}' OR NEW.attempts <> 1 OR v_instance.status IS DISTINCT FROM
       '{T.PROCESSING.value}' OR v_instance.generation <> NEW.generation THEN
      RAISE EXCEPTION '{REFUSED}: %: a job is created {JOB.initial.value} at its first attempt, in the current'
        ' generation of a processing instance (not % at attempt %)', ecalstate_job_label(NEW.instance_id, NEW.jid,
        NEW.generation), NEW.status, NEW.attempts USING ERRCODE = 'check_violation';
    END IF;
  ELSIF NEW.status <> OLD.status AND NOT {task_move} = ANY ({_arrows(pairs(JOB))}) THEN
    RAISE EXCEPTION '{REFUSED}: %: % -> % is not in the job table (allowed from %: %)', ecalstate_job_label(
      NEW.instance_id, NEW.jid, NEW.generation), OLD.status, NEW.status, OLD.status,
      {_allowed_from(JOB, 'OLD.status')} USING ERRCODE = 'check_violation';
  ELSIF {retry} THEN
    SELECT t.max_retries INTO v_retries FROM task_instance ti JOIN task t ON t.id = ti.task_id
      WHERE ti.id = NEW.instance_id;
    IF OLD.attempts > v_retries THEN
      RAISE EXCEPTION '{REFUSED}: %: retries exhausted: % attempts, max retries %', ecalstate_job_label(
        NEW.instance_id, NEW.jid, NEW.generation), OLD.attempts, v_retries USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.attempts <> OLD.attempts + 1 THEN
      RAISE EXCEPTION '{REFUSED}: %: a retry is the next attempt (% -> %)', ecalstate_job_label(NEW.instance_id,
        NEW.jid, NEW.generation), OLD.attempts, NEW.attempts USING ERRCODE = 'check_violation';
    END IF;
  ELSIF NEW.attempts <> OLD.attempts THEN
    RAISE EXCEPTION '{REFUSED}: %: attempts change only when a failed job is retried (% -> %)', ecalstate_job_label(
      NEW.instance_id, NEW.jid, NEW.generation), OLD.attempts, NEW.attempts USING ERRCODE = 'check_violation';
  END IF;
  IF TG_OP = 'INSERT' OR NEW.status <> OLD.status THEN
    PERFORM 1 FROM job j WHERE j.id = NEW.id AND {_vocab_of(JOB, 'j.status')} IS DISTINCT FROM
      (SELECT a.to_status FROM audit_log a WHERE a.job_pk = j.id ORDER BY a.id DESC LIMIT 1);
    IF FOUND THEN
      RAISE EXCEPTION '{REFUSED}: %: % without its audit row (every change is audited in its transaction)',
        ecalstate_job_label(NEW.instance_id, NEW.jid, NEW.generation), (SELECT status FROM job WHERE id = NEW.id)
        USING ERRCODE = 'check_violation';
    END IF;
  END IF;
  RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION ecalstate_guard_run() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF (NEW.fill IS DISTINCT FROM OLD.fill OR NEW.meta <> OLD.meta OR NEW.ended_at IS DISTINCT FROM OLD.ended_at)
     AND NOT COALESCE((OLD.meta::jsonb -> '{ONGOING}') = 'true'::jsonb, false) THEN
    RAISE EXCEPTION '{REFUSED}: run %: its fill and metadata change only while it is being taken (its source''s'
      ' final answer)', OLD.run_number USING ERRCODE = 'check_violation';
  END IF;
  IF NEW.tag_rtypes IS DISTINCT FROM OLD.tag_rtypes
     AND (OLD.tag_rtypes IS NOT NULL OR NEW.tag_rtypes IS DISTINCT FROM OLD.rtypes) THEN
    RAISE EXCEPTION '{REFUSED}: run %: the run types it is exported with (its series'' tags) are kept once set',
      OLD.run_number USING ERRCODE = 'check_violation';
  END IF;
  IF NEW.rtypes <> OLD.rtypes AND OLD.rtypes <> '' AND NOT {operator} THEN
    RAISE EXCEPTION '{REFUSED}: run %: its run types change by an operator''s backfill (role %)', OLD.run_number,
      TG_ARGV[0] USING ERRCODE = 'insufficient_privilege';
  END IF;
  RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION ecalstate_audited_instance() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM 1 FROM task_instance ti WHERE ti.id = NEW.id AND {_vocab_of(TASK, 'ti.status')} IS DISTINCT FROM
    (SELECT a.to_status FROM audit_log a WHERE a.instance_id = ti.id AND a.{TASK_ROWS} ORDER BY a.id DESC LIMIT 1);
  IF FOUND THEN
    RAISE EXCEPTION '{REFUSED}: task instance %: % without its audit row (every change is audited in its'
      ' transaction)', {label}, (SELECT status FROM task_instance WHERE id = NEW.id) USING ERRCODE = 'check_violation';
  END IF;
  RETURN NULL;
END $$;
"""


#: the exporter's high-water mark, without a lock: the audit id sequence's last value S, then wait for the
#: transactions that hold ROW EXCLUSIVE on ``audit_log`` right now. An audit id comes only from the column default
#: of an INSERT (no role below admin may name one), which holds that lock from before it takes the id until its
#: transaction ends: once those transactions ended, every id up to S is committed or never will be. Nothing is
#: locked, so no writer queues behind a waiting exporter, and a reader holds nothing; the wait is bounded
HIGH_WATER = f"""
CREATE OR REPLACE FUNCTION ecalstate_audit_high_water() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  settled bigint := COALESCE(pg_sequence_last_value(pg_get_serial_sequence('audit_log', 'id')::regclass), 0);
  writing text[];
  deadline timestamptz := clock_timestamp() + interval '{HIGH_WATER_WAIT} seconds';
  pause double precision := 0.001;
BEGIN
  SELECT array_agg(l.virtualtransaction) INTO writing FROM pg_locks l
    WHERE l.locktype = 'relation' AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.relation = 'audit_log'::regclass AND l.mode = 'RowExclusiveLock' AND l.granted
      AND l.pid <> pg_backend_pid();
  WHILE writing IS NOT NULL LOOP
    IF clock_timestamp() > deadline THEN
      RAISE EXCEPTION 'audit rows up to id % are still being written by % transaction(s) after {HIGH_WATER_WAIT} s:'
        ' nothing exported, the cursor stays (a transaction open that long is stuck: see pg_stat_activity)',
        settled, cardinality(writing) USING ERRCODE = 'lock_not_available';
    END IF;
    PERFORM pg_sleep(pause);
    pause := least(pause * 2, 0.05);
    SELECT array_agg(l.virtualtransaction) INTO writing FROM pg_locks l
      WHERE l.locktype = 'virtualxid' AND l.granted AND l.virtualtransaction = ANY (writing);
  END LOOP;
  RETURN settled;
END $$;
"""


def _trigger(name: str, table: str, event: str, function: str, admin: str, *args: str, changed: tuple[str, ...] = (),
             deferred: bool = False) -> str:
    """One row trigger for sessions outside the admin role, on ``event`` (an UPDATE: of the ``changed`` columns,
    when one of them changes); dropped first, so that running the roles again replaces it. (Keep WHEN short: it is
    rebuilt for every statement.)"""
    when = [f"NOT pg_has_role(current_user, '{admin}', 'MEMBER')"]
    if changed:
        event += " OF " + ", ".join(changed)
        when.insert(0, "(" + " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in changed) + ")")
    kind, timing = ("CONSTRAINT TRIGGER", "AFTER") if deferred else ("TRIGGER", "BEFORE")
    defer = " DEFERRABLE INITIALLY DEFERRED" if deferred else ""
    arguments = ", ".join(f"'{a}'" for a in args)
    return (f"DROP TRIGGER IF EXISTS {name} ON {table};\n"
            f"CREATE {kind} {name} {timing} {event} ON {table}{defer} FOR EACH ROW WHEN ({' AND '.join(when)})"
            f" EXECUTE FUNCTION {function}({arguments});")


def guards_sql(reader: str, writer: str, operator: str, admin: str) -> list[str]:
    """The guards' statements, for ``roles.roles_sql`` (idempotent; run as the tables' owner)."""
    keep_fields = ("detail IS NOT DISTINCT FROM (SELECT NULLIF(j.fields, '{}') FROM job j"
                   " WHERE j.id = audit_log.job_pk)")
    return [
        "-- guards: the transition tables and the audit hold under raw SQL below admin",
        _functions(),
        *(f"ALTER FUNCTION {f}() OWNER TO {admin};" for f in (
            "ecalstate_guard_instance", "ecalstate_guard_job", "ecalstate_guard_run", "ecalstate_audited_instance")),
        f"ALTER FUNCTION ecalstate_instance_label(bigint, bigint) OWNER TO {admin};",
        f"ALTER FUNCTION ecalstate_job_label(bigint, bigint, bigint) OWNER TO {admin};",
        # the check at commit finds a job's newest audit row through this, whatever the job's count of rows (the
        # instances': ix_audit_task, a few rows each)
        "CREATE INDEX IF NOT EXISTS ix_audit_job ON audit_log (job_pk, id) WHERE job_pk IS NOT NULL;",
        _trigger("ecalstate_guard_new", "task_instance", "INSERT", "ecalstate_guard_instance", admin, operator),
        _trigger("ecalstate_guard_move", "task_instance", "UPDATE", "ecalstate_guard_instance", admin, operator,
                 changed=("status", "generation", "leader_id", "outputs")),
        _trigger("ecalstate_audited_new", "task_instance", "INSERT", "ecalstate_audited_instance", admin,
                 deferred=True),
        _trigger("ecalstate_audited_move", "task_instance", "UPDATE", "ecalstate_audited_instance", admin,
                 changed=("status",), deferred=True),
        _trigger("ecalstate_guard_new", "job", "INSERT", "ecalstate_guard_job", admin, deferred=True),
        _trigger("ecalstate_guard_move", "job", "UPDATE", "ecalstate_guard_job", admin, changed=("status", "attempts"),
                 deferred=True),
        _trigger("ecalstate_guard_move", "run", "UPDATE", "ecalstate_guard_run", admin, operator,
                 changed=("fill", "meta", "rtypes", "tag_rtypes", "ended_at")),
        "",
        "-- row-level rules: a role's audit rows are its own transitions; a job's creation fields are copied into its",
        "-- creation row only as the job holds them; meta's schema version is the admin's; the notifier's bookmarks",
        "-- are the writer's",
        "ALTER TABLE audit_log ENABLE ROW LEVEL SECURITY;",
        "ALTER TABLE meta ENABLE ROW LEVEL SECURITY;",
        "ALTER TABLE export_cursor ENABLE ROW LEVEL SECURITY;",
        *(f"DROP POLICY IF EXISTS {p} ON {t};" for t, p in (
            ("audit_log", "ecalstate_read"), ("audit_log", "ecalstate_writer_rows"),
            ("audit_log", "ecalstate_operator_rows"), ("audit_log", "ecalstate_keep_fields"),
            ("meta", "ecalstate_read"), ("meta", "ecalstate_writer_keys"), ("export_cursor", "ecalstate_read"),
            ("export_cursor", "ecalstate_export_rows"), ("export_cursor", "ecalstate_writer_rows"))),
        "CREATE POLICY ecalstate_read ON audit_log FOR SELECT USING (true);",
        f"CREATE POLICY ecalstate_writer_rows ON audit_log FOR INSERT TO {writer} WITH CHECK"
        f" ({audit_rows(HANDLER_MOVES)});",
        f"CREATE POLICY ecalstate_operator_rows ON audit_log FOR INSERT TO {operator} WITH CHECK"
        f" ({audit_rows(pairs(TASK))});",
        f"CREATE POLICY ecalstate_keep_fields ON audit_log FOR UPDATE TO {writer} USING (detail = '{SAME_AS_JOB}')"
        f" WITH CHECK ({keep_fields});",
        "CREATE POLICY ecalstate_read ON meta FOR SELECT USING (true);",
        f"CREATE POLICY ecalstate_writer_keys ON meta FOR ALL TO {writer}"
        " USING (key <> 'schema_version') WITH CHECK (key <> 'schema_version');",
        "CREATE POLICY ecalstate_read ON export_cursor FOR SELECT USING (true);",
        f"CREATE POLICY ecalstate_export_rows ON export_cursor FOR ALL TO {reader}"
        " USING (target NOT LIKE 'notify:%') WITH CHECK (target NOT LIKE 'notify:%');",
        f"CREATE POLICY ecalstate_writer_rows ON export_cursor FOR ALL TO {writer} USING (true) WITH CHECK (true);",
    ]
