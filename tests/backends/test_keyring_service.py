"""The service of ``backends/keyring`` itself: gnome-keyring's Secret Service on a private
D-Bus, used by python ``keyring`` in a child process, locked and unlocked, and cleaned up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from backends.keyring import KEYRING_BACKEND, SecretService, SecretServiceError

# Run in a child with the service's env: what `cloudtrack login` in a subprocess sees.
_CHILD = """
import json, sys, time
import keyring
ops = json.loads(sys.argv[1])
backend = keyring.get_keyring()
out = {"backend": f"{type(backend).__module__}.{type(backend).__name__}",
       "chain": [f"{type(b).__module__}.{type(b).__name__}"
                 for b in getattr(backend, "backends", [])],
       "results": []}
for op, *args in ops:
    t0 = time.monotonic()
    try:
        value = getattr(keyring, op)(*args)
        result = {"value": value}
    except Exception as e:
        result = {"error": f"{type(e).__module__}.{type(e).__name__}", "message": str(e)}
    result["seconds"] = time.monotonic() - t0
    out["results"].append(result)
print(json.dumps(out))
"""

LOCKED = "keyring.errors.KeyringLocked"


def _keyring(env: dict[str, str], *ops: tuple[str, ...]) -> dict:
    """Run keyring calls in a child with ``env`` added; a prompt that waited for a person
    would hang here, so the child gets a deadline."""
    child_env = {k: v for k, v in os.environ.items() if k != "PYTHON_KEYRING_BACKEND"}
    child_env.update(env)
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(ops)], env=child_env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_keyring_in_a_child_uses_the_secret_service(secret_service: SecretService) -> None:
    out = _keyring(secret_service.env,
                   ("set_password", "cloudtrack-test", "alice", "s3cret"),
                   ("get_password", "cloudtrack-test", "alice"),
                   ("get_password", "cloudtrack-test", "nobody"))
    assert out["backend"] == KEYRING_BACKEND
    assert [r.get("value") for r in out["results"]] == [None, "s3cret", None], out
    # In the daemon's collection, not in some file: read back over D-Bus, not through keyring.
    assert secret_service.get_secret("cloudtrack-test", "alice") == "s3cret"
    [attributes] = secret_service.items()
    assert attributes["service"] == "cloudtrack-test" and attributes["username"] == "alice"


def test_keyring_detects_the_secret_service_by_itself(secret_service: SecretService) -> None:
    """Without the pin, keyring's own choice: with keyrings.alt installed a chain whose first
    link is the Secret Service (the plaintext file is only a fallback)."""
    out = _keyring(secret_service.detect_env,
                   ("set_password", "cloudtrack-test", "bob", "detected"),
                   ("get_password", "cloudtrack-test", "bob"))
    if out["chain"]:
        assert out["chain"][0] == KEYRING_BACKEND, out
    else:
        assert out["backend"] == KEYRING_BACKEND, out
    assert out["results"][1]["value"] == "detected"
    assert secret_service.get_secret("cloudtrack-test", "bob") == "detected"


def test_a_locked_collection_fails_fast_without_a_prompt(secret_service: SecretService) -> None:
    _keyring(secret_service.env, ("set_password", "cloudtrack-test", "carol", "before-lock"))
    secret_service.lock()
    assert secret_service.is_locked()
    out = _keyring(secret_service.env,
                   ("get_password", "cloudtrack-test", "carol"),
                   ("set_password", "cloudtrack-test", "carol", "while-locked"),
                   ("delete_password", "cloudtrack-test", "carol"))
    for result in out["results"]:
        assert result.get("error") == LOCKED, out
        assert result["message"] == "Failed to unlock the collection!"
        # The prompt is dismissed at once (no prompter can be activated on our bus); measured
        # 0.006-0.4 s, far below anything a waiting prompt would take.
        assert result["seconds"] < 10, out
    # keyring asked to unlock and was refused: still locked, nothing changed.
    assert secret_service.is_locked()
    secret_service.unlock()
    assert not secret_service.is_locked()
    out = _keyring(secret_service.env, ("get_password", "cloudtrack-test", "carol"))
    assert out["results"][0]["value"] == "before-lock"


def test_the_detected_chain_does_not_fall_back_when_locked(
        secret_service: SecretService) -> None:
    """KeyringLocked ends keyring's chain: the plaintext fallback is not consulted."""
    secret_service.lock()
    out = _keyring(secret_service.detect_env, ("get_password", "cloudtrack-test", "dave"))
    assert out["results"][0].get("error") == LOCKED, out


def test_unlock_with_a_wrong_password_is_refused(secret_service: SecretService) -> None:
    secret_service.lock()
    with pytest.raises(SecretServiceError, match="password was invalid"):
        secret_service.unlock("not-the-password")
    assert secret_service.is_locked()


def test_the_keyring_lives_in_the_service_directory(secret_service: SecretService) -> None:
    assert secret_service.workdir is not None
    assert (secret_service.workdir / "data" / "keyrings" / "login.keyring").is_file()
    assert secret_service.collection_path.endswith("/collection/login")
    env = secret_service.env
    assert env["DBUS_SESSION_BUS_ADDRESS"] == secret_service.bus_address
    assert env["DBUS_SESSION_BUS_ADDRESS"].startswith("unix:path=" + str(secret_service.workdir))


def test_start_and_stop_leave_nothing_behind() -> None:
    svc = SecretService(password="a fixed one")
    svc.start()
    pids, workdir = svc.pids, svc.workdir
    assert len(pids) == 2 and workdir is not None
    assert not svc.is_locked()
    svc.stop()
    svc.stop()
    for pid in pids:
        assert not psutil.pid_exists(pid) or \
            psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, f"{pid} still running"
    assert not workdir.exists()
    with pytest.raises(SecretServiceError, match="not running"):
        _ = svc.env


def test_a_missing_daemon_says_what_to_install(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SecretServiceError, match="apt-get install gnome-keyring dbus"):
        SecretService().start()
