"""ecalstate: transactional state for detector-calibration workflows.

Import the typed API from here; heavy optional modules (InfluxDB client,
HTCondor bindings) are imported only where they are used.
"""

from .errors import Conflict, EcalStateError, Invalid, NotFound, Refused, SchemaError
from .results import Claim, JobUpdate, RunSpec
from .statemachine import JOB, TASK, JobStatus, TaskStatus, TransitionNotAllowed
from .store import Store

__all__ = [
    "JOB", "TASK", "Claim", "Conflict", "EcalStateError", "Invalid", "JobStatus", "JobUpdate", "NotFound",
    "Refused", "RunSpec", "SchemaError", "Store", "TaskStatus", "TransitionNotAllowed",
]
__version__ = "0.1.0"
