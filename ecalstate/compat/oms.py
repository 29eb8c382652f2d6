"""``QueryOMS``, the original's OMS helper, on ecalstate's OMS client (:mod:`ecalstate.sources.oms`).

Scripts call ``QueryOMS().get_run_attribute(run, 'fill_number')`` and chain queries on its ``oms``
attribute as on the public ``omsapi`` client: ``.oms.query('fills').filter(...).attrs([...]).data().json()``,
``.filters([...])``, ``.clear_filter()``, ``.custom(k, v)``, ``.meta()``. As that client does, attribute names are
checked against ``/<resource>/meta`` and unknown ones dropped, so a chain answers what it answered there
(tests/test_oms_client.py runs both against the local OMS-format server). The URL and credentials come from the
environment (``ECALSTATE_OMS_URL``, ``ECALSTATE_OMS_CLIENT_ID``, ``ECALSTATE_OMS_CLIENT_SECRET_FILE``), never
from the script.
"""

from __future__ import annotations

from typing import Any, Optional

from ..catalog import check_run
from ..errors import NotFound
from ..sources.oms import OMSAPI, oms_api


class QueryOMS:
    """Run and fill attributes from CMS OMS."""

    def __init__(self, url: Optional[str] = None, oms: Optional[OMSAPI] = None) -> None:
        self.oms = oms if oms is not None else oms_api(url, validate=True)

    def get_run_attribute(self, run: Any, attribute: str) -> Any:
        """One attribute of one run (``None`` when OMS has no value for it)."""
        number = check_run(run)[0]
        rows = (self.oms.query("runs").filter("run_number", number).attrs(["run_number", attribute])
                .paginate(1, 1).data().json().get("data") or [])
        if not rows:
            raise NotFound(f"OMS has no run {number}")
        return rows[0].get("attributes", {}).get(attribute)
