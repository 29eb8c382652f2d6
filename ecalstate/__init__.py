"""ecalstate: transactional state for detector-calibration workflows.

Import the typed API from here; heavy optional modules (InfluxDB client,
HTCondor bindings) are imported only where they are used.
"""

from typing import TYPE_CHECKING

from .errors import Conflict, EcalStateError, Invalid, NotFound, Refused, SchemaError
from .results import Claim, JobUpdate, RunSpec
from .statemachine import JOB, TASK, JobStatus, TaskStatus, TransitionNotAllowed

if TYPE_CHECKING:
    from .store import Store


def __getattr__(name: str) -> object:
    """``Store`` loads on first use, so ``ecalstate --help`` does not build the SQLModel schema."""
    if name == "Store":
        from .store import Store

        return Store
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "JOB", "TASK", "Claim", "Conflict", "EcalStateError", "Invalid", "JobStatus", "JobUpdate", "NotFound",
    "Refused", "RunSpec", "SchemaError", "Store", "TaskStatus", "TransitionNotAllowed",
]
__version__ = "0.1.0"
