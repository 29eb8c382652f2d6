"""Jobs can't take the handler's secrets (issue 11, item 3): an allow-listed environment, and fields that carry
a configured secret are refused."""

from __future__ import annotations

from pathlib import Path

from ecalstate.secrets import job_environment, known_secrets, leaked, masked

HANDLER_ENV = {
    "PATH": "/usr/bin:/bin", "HOME": "/home/jenkins", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
    "ECALSTATE_DB": "postgresql+psycopg://ecal@dbod:6600/ecal", "ECALSTATE_DB_PASSWORD": "db-pass-1234",
    "ECALSTATE_INFLUX_TOKEN": "influx-token-5678", "AWS_SECRET": "x", "X509_USER_PROXY": "/tmp/x509up_u1000",
    "PGPASSWORD": "pg-pass-9999",
}


def test_jobs_get_the_base_variables_and_what_their_workflow_declares() -> None:
    env = job_environment(["X509_USER_PROXY", "ECALSTATE_DB", "ECALSTATE_DB_PASSWORD"], HANDLER_ENV)
    assert env == {"PATH": "/usr/bin:/bin", "HOME": "/home/jenkins", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
                   "X509_USER_PROXY": "/tmp/x509up_u1000"}  # the database and its password: never, even declared


def test_known_secrets_come_from_variables_and_the_files_they_name(tmp_path: Path) -> None:
    password_file = tmp_path / "db.secret"
    password_file.write_text("from-a-file-42\n")
    pgpass = tmp_path / "pgpass"
    pgpass.write_text("# comment\ndbod:6600:ecal:ecal:pgpass-secret-7\n")
    env = {**HANDLER_ENV, "ECALSTATE_DB_PASSWORD_FILE": str(password_file), "PGPASSFILE": str(pgpass),
           "ECALSTATE_INFLUX_PASSWORD": "short"}
    assert known_secrets(env) == {"db-pass-1234", "influx-token-5678", "pg-pass-9999", "from-a-file-42",
                                  "pgpass-secret-7"}  # "short": too short to be told from ordinary text


def test_a_field_carrying_a_secret_is_detected() -> None:
    secrets = known_secrets(HANDLER_ENV)
    assert leaked(["/eos/out.root", 42, "token=influx-token-5678&x"], secrets)
    assert not leaked(["/eos/out.root", 42, None], secrets)
    assert not leaked(["anything"], frozenset())


def test_the_password_of_the_database_url_is_a_secret() -> None:
    env = {"ECALSTATE_DB": "postgresql+psycopg://ecal:url-pass-3141@dbod:6600/ecal"}
    assert known_secrets(env) == {"url-pass-3141"}
    assert known_secrets({"ECALSTATE_DB": "/var/lib/ecal/state.db"}) == frozenset()


def test_a_secret_in_text_is_masked_longest_first() -> None:
    secrets = frozenset({"db-pass-1234", "db-pass-1234-extended"})
    assert masked("login db-pass-1234-extended then db-pass-1234.", secrets) == "login [secret] then [secret]."
    assert masked("nothing here", secrets) == "nothing here"
