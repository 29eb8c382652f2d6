"""The OMS team's own client (``omsapi``, from PyPI) against the local OMS-format server the tests and the demo
trust, over HTTP on loopback: the stand-in answers what the real client asks (``/<resource>/meta`` before every
query, its query strings, its OIDC token request), and the drop-in's ``QueryOMS().oms`` chains answer what the
real client's answer.

No CERN login: ``omsapi.OMSAPI`` runs with ``cert_verify=False`` on a plain-HTTP loopback URL, either without
authentication (an endpoint inside the experiment's network) or with its ``auth_oidc`` flow, whose token endpoint
(the module's ``cern_api_url``, CERN's SSO) is pointed at the stand-in's ``/token`` for the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import omsapi
import pytest
from oms_server import OmsServer, oms_server

from ecalstate.compat.oms import QueryOMS

SECRET = "real-client-secret-value"


@pytest.fixture
def day() -> Iterator[OmsServer]:
    """A stand-in without authentication, holding a dozen runs and fills."""
    with oms_server() as server:
        fill(server)
        yield server


def fill(server: OmsServer) -> None:
    for i in range(12):
        server.run(390001 + i, 9000 + i // 3, end=None if i == 11 else "2026-06-01T12:00:00Z",
                   recorded_lumi=0.5 * i, hlt_key=f"/cdaq/physics/v{i % 2}")
    for number in range(9000, 9004):
        server.fill(number, end=None if number == 9003 else "2026-06-02T03:00:00Z")


def real(server: OmsServer) -> omsapi.OMSAPI:
    return omsapi.OMSAPI(server.api_url, "v1", verbose=False, cert_verify=False, retry_on_err_sec=0,
                         retry_on_err_attempts=0)


def with_filters(query: Any) -> Any:
    """``filters`` returns nothing in the real client: a script calls it apart, then goes on with the query."""
    query.filters([{"attribute_name": "fill_number", "value": 9001, "operator": "GE"},
                   {"attribute_name": "recorded_lumi", "value": 4, "operator": "LT"}])
    return query


#: query chains a script may hold, each applied to a query of either client
CHAINS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "filter-attrs-sort-page": ("runs", lambda q: q.filter("run_number", 390003, "GT").attrs(
        ["run_number", "fill_number", "end_time"]).sort("run_number").paginate(2, 4)),
    "default-page-of-ten": ("runs", lambda q: q.sort("run_number", asc=False)),
    "filters-list": ("runs", lambda q: with_filters(q).attrs(["run_number", "recorded_lumi"])),
    "clear-filter": ("runs", lambda q: q.filter("run_number", 1, "LT").clear_filter().filter("hlt_key", "v1", "CT")),
    "fills-descending": ("fills", lambda q: q.filter("fill_number", 9001, "GE").attrs(["fill_number", "end_time"])
                         .sort("fill_number", asc=False).paginate(1, 50)),
    "custom-parameter": ("fills", lambda q: q.custom("group[granularity]", "fill").paginate(1, 2)),
}


def test_the_real_client_loads_each_resources_meta_from_the_stand_in(day: OmsServer) -> None:
    query = real(day).query("runs")
    fields = query.meta()
    assert isinstance(fields, dict) and {"run_number", "fill_number", "end_time", "hlt_key"} <= set(fields)
    assert day.seen[-1][0] == "/agg/api/v1/runs/meta"
    answer = query.attrs(["run_number", "no_such_attribute"]).paginate(1, 3).data()  # validated against /meta
    assert answer.status_code == 200 and day.requests[-1]["fields"] == ["run_number"]
    assert [d["attributes"] for d in answer.json()["data"]] == [{"run_number": n} for n in (390001, 390002, 390003)]
    assert QueryOMS(url=day.api_url).oms.query("fills").meta() == real(day).query("fills").meta()


@pytest.mark.parametrize("chain", CHAINS.values(), ids=CHAINS.keys())
def test_the_drop_in_answers_every_chain_as_the_real_client(day: OmsServer, chain: tuple[str, Any],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ECALSTATE_OMS_CLIENT_ID", raising=False)
    resource, build = chain
    theirs = build(real(day).query(resource)).data()
    ours = build(QueryOMS(url=day.api_url).oms.query(resource)).data()
    assert theirs.status_code == ours.status_code == 200
    assert ours.json() == theirs.json()
    assert ours.json()["data"]  # a chain that answers nothing would prove nothing
    asked = [q for q in day.requests if q["path"] != ["/agg/api/v1/" + resource + "/meta"]][-2:]
    assert {k: sorted(v[0].split(",")) for k, v in asked[0].items()} == {
        k: sorted(v[0].split(",")) for k, v in asked[1].items()}  # the same query string, field order aside


def test_the_real_clients_oidc_flow_against_the_stand_in(monkeypatch: pytest.MonkeyPatch, tmp_path: Any,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """``auth_oidc`` posts client credentials as the stand-in's ``/token`` expects; its bearer token opens the API;
    a stale token is renewed once on 401 (by both clients); both answer the same."""
    with oms_server("ecal-automation", SECRET) as oms:
        fill(oms)
        monkeypatch.setattr(omsapi, "cern_api_url", oms.token_url)
        client = real(oms)
        client.auth_oidc("ecal-automation", SECRET)
        assert oms.token_requests == 1
        secret = tmp_path / "secret"
        secret.write_text(SECRET)
        secret.chmod(0o600)
        for name, value in {"ECALSTATE_OMS_CLIENT_ID": "ecal-automation", "ECALSTATE_OMS_CLIENT_SECRET_FILE":
                            str(secret), "ECALSTATE_OMS_TOKEN_URL": oms.token_url}.items():
            monkeypatch.setenv(name, value)
        drop_in = QueryOMS(url=oms.api_url)

        def both() -> tuple[Any, Any]:
            return tuple(c.query("runs").filter("fill_number", 9002).attrs(["run_number", "end_time"]).data().json()
                         for c in (client, drop_in.oms))

        theirs, ours = both()
        assert theirs == ours and [d["id"] for d in ours["data"]] == ["390007", "390008", "390009"]
        client.oms_auth.token_time -= 60  # the real client renews at most every 30 s
        oms.expire_tokens()
        theirs, ours = both()
        assert theirs == ours and len(ours["data"]) == 3
        assert "Unauthorized. Will try to obtain a new token" in capsys.readouterr().out
        assert all(h.get("Authorization", "").startswith("Bearer ") for _, h in oms.seen)
        assert drop_in.get_run_attribute(390012, "end_time") is None  # still being taken
