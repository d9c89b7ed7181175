"""The doctor's report: checks, the root cause of the lowest failing layer, exit codes, the
JSON shape, and the scrubbing of every secret the run knows of."""

from __future__ import annotations

import time

import pytest

from cloudtrack.config import resolve
from cloudtrack.doctor import CAUSES, LAYERS, Check, DoctorReport
from cloudtrack.doctor.core import (
    Probe,
    ProbeTimeout,
    Stop,
    run_bounded,
    scrub,
    secrets_in_environment,
    with_timeouts,
)


def _check(id: str, layer: str, status: str = "ok", cause: str = "ok") -> Check:
    return Check(id, layer, status, cause, f"{id} summary", None if status == "ok" else "fix")  # type: ignore[arg-type]


def test_causes_are_the_catalogues_vocabulary() -> None:
    assert set(CAUSES) == {
        "ok", "config-invalid", "dependency-missing", "dns-failure", "connection-refused",
        "network-timeout", "tls-untrusted", "tls-mismatch", "credentials-missing",
        "credentials-invalid", "token-expired", "permission-denied", "container-not-found",
        "endpoint-mismatch", "not-mlflow-server", "clock-skew", "server-error"}


def test_check_refuses_unknown_layers_and_causes() -> None:
    with pytest.raises(ValueError):
        Check("x", "nowhere", "ok", "ok", "")
    with pytest.raises(ValueError):
        Check("x", "auth", "fail", "it-broke", "")
    with pytest.raises(ValueError):
        Check("x", "auth", "ok", "token-expired", "")


def test_cause_is_that_of_the_lowest_failing_layer() -> None:
    report = DoctorReport("s3://b/p", "s3", (
        _check("config.uri", "config"),
        _check("authz.write", "authz", "fail", "permission-denied"),
        _check("auth.clock", "auth", "warn", "clock-skew"),
        _check("tls", "tls", "fail", "tls-untrusted"),
        _check("consistency.region", "consistency", "fail", "endpoint-mismatch"),
    ))
    assert report.status == "fail" and report.exit_code == 1
    assert report.cause == "tls-untrusted"
    assert report.root is not None and report.root.id == "tls"
    assert LAYERS.index("tls") < LAYERS.index("authz")


def test_warnings_alone_are_no_failure() -> None:
    report = DoctorReport("x", "file", (_check("a", "config"),
                                        _check("b", "auth", "warn", "token-expired")))
    assert (report.status, report.cause, report.exit_code) == ("warn", "ok", 0)


def test_json_shape() -> None:
    report = DoctorReport("gs://b", "gcs", (_check("dns", "dns", "fail", "dns-failure"),), 1.5)
    data = report.to_dict()
    assert list(data) == ["uri", "backend", "status", "cause", "checks"]
    assert data["checks"] == [{"id": "dns", "layer": "dns", "status": "fail",
                               "cause": "dns-failure", "summary": "dns summary", "fix": "fix"}]


def test_secrets_of_the_environment() -> None:
    env = {
        "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
        "AZURE_STORAGE_CONNECTION_STRING":
            "AccountName=acct;AccountKey=c2VjcmV0LWtleS1iYXNlNjQ=;BlobEndpoint=https://x",
        "SOME_DB": "postgresql://user:hunter2hunter2@db/x",
        "MLFLOW_TRACKING_TOKEN": "dapi0123456789",
        "GOOGLE_APPLICATION_CREDENTIALS": "/home/me/key.json",
        "MLFLOW_TRACKING_INSECURE_TLS": "true",
    }
    found = secrets_in_environment(env)
    assert "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY" in found
    assert "c2VjcmV0LWtleS1iYXNlNjQ=" in found
    assert "hunter2hunter2" in found and "dapi0123456789" in found
    assert "AKIAIOSFODNN7EXAMPLE" not in found, "an access key id is not a secret"
    assert "/home/me/key.json" not in found and "true" not in found


def test_scrub_removes_known_secrets_and_patterns() -> None:
    text = ('sig=abcdef123456 password=pw123456 Bearer eyJ.abc.def '
            '{"access_token": "ya29.secret"} Signature=0123456789abcdef0123 '
            'https://u:pass1234@h/x and the key K3Y-V4LU3-1234')
    out = scrub(text, {"K3Y-V4LU3-1234"})
    for secret in ("abcdef123456", "pw123456", "eyJ.abc.def", "ya29.secret",
                   "0123456789abcdef0123", "pass1234", "K3Y-V4LU3-1234"):
        assert secret not in out


def test_probe_scrubs_what_it_records_and_what_it_learns() -> None:
    probe = Probe({"MLFLOW_TRACKING_PASSWORD": "p4ssw0rd-value"})
    probe.secret("token-learnt-at-runtime")
    probe.ok("a", "auth", "sent p4ssw0rd-value and token-learnt-at-runtime")
    with pytest.raises(Stop):
        probe.fail("b", "auth", "credentials-invalid", "refused p4ssw0rd-value",
                   "set it to something other than p4ssw0rd-value")
    report = probe.report("http://u:p4ssw0rd-value@h", "http", 0.1)
    text = str(report.to_dict())
    assert "p4ssw0rd-value" not in text and "token-learnt-at-runtime" not in text


def test_child_probe_pins_layer_and_prefix() -> None:
    parent = Probe({})
    child = parent.child("artifacts.", "consistency")
    child.note_fail("auth.credential", "auth", "credentials-missing", "no keys", "set keys")
    parent.adopt(child)
    check = parent.checks[0]
    assert (check.id, check.layer, check.cause) == ("artifacts.auth.credential", "consistency",
                                                   "credentials-missing")


def test_run_bounded_gives_up_on_a_hanging_step() -> None:
    start = time.monotonic()
    with pytest.raises(ProbeTimeout):
        run_bounded(lambda: time.sleep(5), 0.2, "a hanging SDK call")
    assert time.monotonic() - start < 1.0
    assert run_bounded(lambda: 42, 1.0, "quick") == 42
    with pytest.raises(ZeroDivisionError):
        run_bounded(lambda: 1 / 0, 1.0, "failing")


def test_the_budget_caps_every_step() -> None:
    probe = Probe({}, timeout=5.0, budget=0.3)
    assert probe.step_timeout() <= 0.3
    time.sleep(0.35)
    with pytest.raises(ProbeTimeout):
        probe.call(lambda: 1, what="too late")


def test_with_timeouts_keeps_the_resolved_environment() -> None:
    env = {"MLFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:9", "CLOUDTRACK_READ_TIMEOUT": "99"}
    config = resolve("s3://bucket/prefix", env)
    quick = with_timeouts(config, 2.0)
    assert quick.environ is config.environ
    assert quick.get("read_timeout") == 2.0 and quick.get("connect_timeout") == 2.0
    assert quick.get("max_attempts") == 1
    assert quick.get("endpoint_url") == "http://127.0.0.1:9"
