"""Attack tables for the encryption envelope, against the Pod's real processes (two API workers,
SQLite on disk), the serverless handler, and the envelope code itself.

- `LOW_ORDER_EPKS`: every small-order Curve25519 point, with and without bit 255: 400
  `decryption_failed`, never a 500.
- `TAMPERS`: a flipped, cut or swapped byte in ciphertext, nonce or epk: refused with its code.
- `REPLAYS`: an accepted envelope sent again, also spelled differently (epk bit 255, base64
  slack bits): `envelope_replayed`, in the Pod even after the API restarts.
- `AGES`: with ENVELOPE_MAX_AGE set, a missing, stale or future `ts` is `envelope_expired`.
- `LEAKS`: encrypted requests that fail: no secret of the payload in clear in the reply, in
  `GET /jobs`, `GET /jobs/{id}`, the SQLite files or the logs; the requester still reads it all.
"""
from __future__ import annotations

import base64
import concurrent.futures
import json
import time
from pathlib import Path

import pytest
from nacl.public import Box, PrivateKey, PublicKey
from nacl.utils import random as random_bytes

from services.config import Settings
from services.errors import AppError
from services.security.envelope import OpenedPayload, open_payload, open_reply, seal_request
from services.security.replay import ReplayCache, check_fresh
from tests import workflows
from tests.fake_runpod import FakeRunPod
from tests.pod_process import start_pod
from tests.test_serverless import Handler

SERVER_KEY = PrivateKey.generate()
SERVER_KEY_B64 = base64.b64encode(bytes(SERVER_KEY)).decode()
SERVER_PUB_B64 = base64.b64encode(bytes(SERVER_KEY.public_key)).decode()
WORKFLOW = workflows.image(width=16, height=16)

_POINTS = [
    ("zero", "00" * 32),
    ("one", "01" + "00" * 31),
    ("order 8, first", "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    ("order 8, second", "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    ("p - 1 (order 2)", "ec" + "ff" * 30 + "7f"),
    ("p (zero again)", "ed" + "ff" * 30 + "7f"),
    ("p + 1 (one again)", "ee" + "ff" * 30 + "7f"),
]
# X25519 ignores bit 255, so each point has a second spelling.
LOW_ORDER_EPKS = [(label, bytes.fromhex(h)) for label, h in _POINTS] + \
                 [(label + ", bit 255 set", bytes.fromhex(h[:62] + f"{int(h[62:], 16) | 0x80:02x}")) for label, h in _POINTS]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def envelope_for(payload, *, server_pub_b64: str = SERVER_PUB_B64, raw: bytes | None = None):
    """An envelope built by hand (seal_request adds `ts`; some rows need control over it)."""
    ephemeral = PrivateKey.generate()
    box = Box(ephemeral, PublicKey(unb64(server_pub_b64)))
    nonce = random_bytes(Box.NONCE_SIZE)
    ciphertext = box.encrypt(raw if raw is not None else json.dumps(payload).encode(), nonce).ciphertext
    return {"encrypted": True, "epk": b64(bytes(ephemeral.public_key)), "nonce": b64(nonce),
            "ciphertext": b64(ciphertext)}, box


def _edit(field, change):
    def mutate(env):
        return {**env, field: b64(change(unb64(env[field])))}
    return mutate


def _flip(field, index):
    return _edit(field, lambda raw: raw[:index % len(raw)] + bytes([raw[index % len(raw)] ^ 0x01]) + raw[index % len(raw) + 1:])


def _respell_epk(env):
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    text = env["epk"]  # 32 bytes: 43 characters and '=', the last one has 2 unused bits
    return {**env, "epk": text[:42] + alphabet[alphabet.index(text[42]) ^ 1] + text[43:]}


_OTHER_SERVER = b64(bytes(PrivateKey.generate().public_key))

# (label, how the valid envelope is changed, the code that refuses it)
TAMPERS = [
    ("ciphertext: first byte flipped (the MAC)", _flip("ciphertext", 0), "decryption_failed"),
    ("ciphertext: a middle byte flipped", _flip("ciphertext", 40), "decryption_failed"),
    ("ciphertext: last byte flipped", _flip("ciphertext", -1), "decryption_failed"),
    ("ciphertext: one byte cut", _edit("ciphertext", lambda raw: raw[:-1]), "decryption_failed"),
    ("ciphertext: one byte added", _edit("ciphertext", lambda raw: raw + b"\0"), "decryption_failed"),
    ("ciphertext: shorter than a MAC", _edit("ciphertext", lambda raw: raw[:8]), "decryption_failed"),
    ("ciphertext: base64 with a space", lambda env: {**env, "ciphertext": " " + env["ciphertext"]}, "decryption_failed"),
    ("ciphertext: empty", lambda env: {**env, "ciphertext": ""}, "missing encrypted fields"),
    ("nonce: first byte flipped", _flip("nonce", 0), "decryption_failed"),
    ("nonce: last byte flipped", _flip("nonce", -1), "decryption_failed"),
    ("nonce: 23 bytes", _edit("nonce", lambda raw: raw[:23]), "decryption_failed"),
    ("nonce: 25 bytes", _edit("nonce", lambda raw: raw + b"\0"), "decryption_failed"),
    ("epk: first byte flipped", _flip("epk", 0), "decryption_failed"),
    ("epk: 31 bytes", _edit("epk", lambda raw: raw[:31]), "decryption_failed"),
    ("epk: 33 bytes", _edit("epk", lambda raw: raw + b"\0"), "decryption_failed"),
    ("epk: someone else's key", lambda env: {**env, "epk": b64(bytes(PrivateKey.generate().public_key))}, "decryption_failed"),
    ("epk: not base64", lambda env: {**env, "epk": "!!!not-base64!!!"}, "decryption_failed"),
    ("epk: a number", lambda env: {**env, "epk": 12345}, "decryption_failed"),
    ("epk: missing", lambda env: {k: v for k, v in env.items() if k != "epk"}, "missing encrypted fields"),
    ("sealed for another server", lambda env: envelope_for({"workflow": WORKFLOW}, server_pub_b64=_OTHER_SERVER)[0],
     "decryption_failed"),
    ("opens to something that is not JSON", lambda env: envelope_for(None, raw=b"not json {")[0], "decryption_failed"),
]

# (label, how an accepted envelope is sent again)
REPLAYS = [
    ("the same envelope", lambda env: dict(env)),
    ("epk with bit 255 set (the same key to X25519)",
     _edit("epk", lambda raw: raw[:31] + bytes([raw[31] ^ 0x80]))),
    ("epk spelled with other base64 padding bits", _respell_epk),
    ("without encrypted: true", lambda env: {k: v for k, v in env.items() if k != "encrypted"}),
    ("with plaintext fields beside it", lambda env: {**env, "version_id": "demo", "workflow": WORKFLOW}),
    ("with a job_id of its own", lambda env: {**env, "job_id": "replayed-with-an-id"}),
]

# (label, the sealed payload's ts relative to now (or a literal), refused?) with ENVELOPE_MAX_AGE=300
# (label, ts, the refusal: None when accepted)
EXPIRED, NOT_JSON = "envelope_expired", "invalid_payload:ts"
AGES = [
    ("no ts", None, EXPIRED),
    ("an hour old", -3600, EXPIRED),
    ("301 s old", -301, EXPIRED),
    ("two minutes ahead", 120, EXPIRED),
    ("a string", "yesterday", EXPIRED),
    ("a boolean", True, EXPIRED),
    ("NaN", float("nan"), NOT_JSON),  # JSON cannot carry it: refused as the envelope opens
    ("a minute old", -60, None),
    ("30 s ahead (clock skew)", 30, None),
]

# (label, payload with a secret, the secret, the readable code)
LEAKS = [
    ("unknown version", {"version_id": "secret-version-q7z", "workflow": WORKFLOW}, "secret-version-q7z",
     "unknown_version"),
    ("another job's file", {"workflow": {"1": {"class_type": "LoadImage", "inputs": {"image": "jobs/x/secret-cat-91x.png"}},
                                         "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "s"}}}},
     "secret-cat-91x", "forbidden_input"),
    ("ComfyUI's node_errors", {"workflow": {"1": {"class_type": "EmptyImage", "inputs": {"width": "secret-width-88k", "height": 8,
                                                                                         "batch_size": 1, "color": 0}},
                                            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "s"}}}},
     "secret-width-88k", "workflow_rejected"),
    ("an image that is not base64", {"workflow": workflows.load_invert_save("secret-img-5tq.png"),
                                     "images": [{"name": "secret-img-5tq.png", "image": "%%%not base64%%%"}]},
     "secret-img-5tq", "invalid_input_image"),
]


def aged(ts) -> dict:
    """A payload whose `ts` is an AGES row: seconds from now (an int), a literal, or none."""
    payload = {"workflow": WORKFLOW}
    if ts is not None:
        payload["ts"] = time.time() + ts if isinstance(ts, int) and not isinstance(ts, bool) else ts
    return payload


def settings(**env) -> Settings:
    return Settings.from_env({"WORKER_PRIVATE_KEY_B64": SERVER_KEY_B64, **env})


def opened_code(body, **env) -> str:
    with pytest.raises(AppError) as err:
        opened = open_payload(body, settings(**env))
        ReplayCache(settings(**env).envelope_max_age).accept(opened)
    return err.value.code


# ---- the envelope code ------------------------------------------------------------------------

@pytest.mark.parametrize("label,epk", LOW_ORDER_EPKS, ids=[e[0] for e in LOW_ORDER_EPKS])
def test_low_order_epk_is_a_typed_400(label, epk):
    env, _ = envelope_for({"workflow": WORKFLOW})
    with pytest.raises(AppError) as err:
        open_payload({**env, "epk": b64(epk)}, settings())
    assert (err.value.code, err.value.status) == ("decryption_failed", 400)


@pytest.mark.parametrize("label,mutate,code", TAMPERS, ids=[t[0] for t in TAMPERS])
def test_tampered_envelope_is_refused(label, mutate, code):
    env, _ = envelope_for({"workflow": WORKFLOW})
    assert opened_code(mutate(env)) == code


def test_replays_are_refused_in_memory_and_the_cache_stays_bounded():
    cache = ReplayCache()
    env, _ = seal_request({"workflow": WORKFLOW}, SERVER_PUB_B64)
    cache.accept(open_payload(env, settings()))
    for label, mutate in REPLAYS:
        with pytest.raises(AppError) as err:
            cache.accept(open_payload(mutate(env), settings()))
        assert err.value.code == "envelope_replayed", label
    small = ReplayCache(capacity=3)
    envelopes = [seal_request({"n": i}, SERVER_PUB_B64)[0] for i in range(5)]
    for env in envelopes:
        small.accept(open_payload(env, settings()))
    assert len(small._seen) == 3  # the oldest were forgotten; the newest are still refused
    with pytest.raises(AppError):
        small.accept(open_payload(envelopes[-1], settings()))


@pytest.mark.parametrize("label,ts,refused", AGES, ids=[a[0] for a in AGES])
def test_envelope_age(label, ts, refused):
    if refused == NOT_JSON:
        with pytest.raises(AppError) as err:
            open_payload(envelope_for(aged(ts))[0], settings())
        assert err.value.code == NOT_JSON and err.value.status == 400
        return
    opened = open_payload(envelope_for(aged(ts))[0], settings())
    assert "ts" not in opened.payload  # the job never sees it
    if refused:
        with pytest.raises(AppError) as err:
            check_fresh(opened, 300)
        assert err.value.code == refused
    else:
        check_fresh(opened, 300)
    check_fresh(opened, 0)  # without ENVELOPE_MAX_AGE any ts (or none) is fine


def test_an_age_limited_cache_forgets_what_the_age_check_refuses_anyway():
    cache = ReplayCache(max_age=300)
    opened = open_payload(seal_request({"n": 1}, SERVER_PUB_B64)[0], settings())
    cache.accept(opened)
    cache._seen[opened.replay_key] -= 1000  # as if accepted long ago
    cache.accept(open_payload(seal_request({"n": 2}, SERVER_PUB_B64)[0], settings()))
    assert opened.replay_key not in cache._seen


def test_sealed_errors_keep_only_the_code_prefix_readable():
    env, box = seal_request({"workflow": WORKFLOW}, SERVER_PUB_B64)
    opened = open_payload(env, settings())
    error = AppError("unknown_version", "no versions/secret-v.json", suffix="secret-v")
    body = opened.error(error)
    assert set(body) == {"error", "encrypted", "nonce", "ciphertext"} and body["error"] == "unknown_version"
    assert "secret-v" not in json.dumps(body)
    assert open_reply(body, box) == error.as_dict()
    assert OpenedPayload({}, None).error(error) == error.as_dict()  # plaintext requests: as before


# ---- the Pod ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pod(tmp_path_factory):
    pod = start_pod(tmp_path_factory.mktemp("pod-envelopes"),
                    env={"WORKER_PRIVATE_KEY_B64": SERVER_KEY_B64, "API_WORKERS": "2"})
    yield pod
    pod.stop()


def test_pod_refuses_low_order_epks(pod):
    refused = 0
    for label, epk in LOW_ORDER_EPKS:
        env, _ = envelope_for({"workflow": WORKFLOW})
        status, body = pod.request("POST", "/run", {**env, "epk": b64(epk)})
        assert (status, body["error"]) == (400, "decryption_failed"), label
        refused += 1
    assert refused == 14


def test_pod_refuses_tampered_envelopes(pod):
    for label, mutate, code in TAMPERS:
        env, _ = envelope_for({"workflow": WORKFLOW})
        status, body = pod.request("POST", "/run", mutate(env))
        assert (status, body["error"]) == (400, code), label


def test_pod_accepts_an_envelope_once_across_workers_and_restarts(pod):
    env, box = seal_request({"workflow": WORKFLOW}, SERVER_PUB_B64)
    status, reply = pod.request("POST", "/run", env)
    assert status == 200 and open_reply(reply, box)["outputs"]
    for label, mutate in REPLAYS:
        status, body = pod.request("POST", "/run", mutate(env))
        assert (status, body["error"]) == (409, "envelope_replayed"), label

    # Eight at once, spread over both API workers: exactly one runs.
    fresh, _ = seal_request({"workflow": WORKFLOW}, SERVER_PUB_B64)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: pod.request("POST", "/run", {**fresh, "async": True}), range(8)))
    assert sorted(status for status, _ in answers) == [202] + [409] * 7

    assert pod.ctl("restart", "api").returncode == 0
    pod.wait_healthy(30)
    for body in (env, fresh):
        status, answer = pod.request("POST", "/run", body)
        assert (status, answer["error"]) == (409, "envelope_replayed")


def test_pod_retry_naming_its_job_id_gets_the_same_job(pod):
    env, box = seal_request({"workflow": WORKFLOW}, SERVER_PUB_B64)
    first = pod.request("POST", "/run", {**env, "job_id": "sealed-retry-1"})
    again = pod.request("POST", "/run", {**env, "job_id": "sealed-retry-1"})
    assert first[0] == again[0] == 200
    assert open_reply(again[1]["result"], box)["prompt_id"] == open_reply(first[1], box)["prompt_id"]  # ran once
    status, body = pod.request("POST", "/run", {**env, "job_id": "sealed-retry-2"})
    assert (status, body["error"]) == (409, "envelope_replayed")


def _leaks(text: str) -> list[str]:
    return [secret for _, _, secret, _ in LEAKS if secret in text]


@pytest.mark.parametrize("run_async", [False, True], ids=["sync", "async"])
def test_pod_failures_of_encrypted_jobs_are_sealed_everywhere(pod, run_async):
    for label, payload, secret, code in LEAKS:
        env, box = seal_request(payload, SERVER_PUB_B64)
        status, reply = pod.request("POST", "/run", {**env, "async": run_async})
        if run_async and status == 202:
            job_id = reply["job_id"]
            deadline = time.monotonic() + 30
            while (view := pod.request("GET", f"/jobs/{job_id}")[1])["state"] not in ("failed", "succeeded"):
                assert time.monotonic() < deadline
                time.sleep(0.1)
            assert view["state"] == "failed" and view["error"] == code and view["detail"] is None, label
            sealed = view["result"]
        else:
            assert status >= 400 and reply["error"] == code, (label, reply)
            assert set(reply) <= {"error", "job_id", "encrypted", "nonce", "ciphertext"}, label
            sealed = reply
        assert secret not in json.dumps(reply), label
        opened = open_reply(sealed, box)  # the requester reads everything
        assert opened["error"].startswith(code) and secret in json.dumps(opened), label

    everything = json.dumps(pod.request("GET", "/jobs?limit=1000")[1])
    every_job = json.dumps([pod.request("GET", f"/jobs/{j['job_id']}")[1]
                            for j in pod.request("GET", "/jobs?limit=1000")[1]["jobs"]])
    state = Path(pod.env["DATA_ROOT"]) / "state"
    db_bytes = b"".join(p.read_bytes() for p in state.glob("appliance.db*")).decode("latin-1")
    assert _leaks(everything) == _leaks(every_job) == _leaks(db_bytes) == []
    assert _leaks(pod.log()) == [] and _leaks(_program_logs(pod)) == []


def _program_logs(pod) -> str:
    logs = Path(pod.env["DATA_ROOT"]) / "logs"
    return "".join(p.read_text(errors="replace") for p in logs.glob("api*") if p.is_file())


# ---- the serverless handler -------------------------------------------------------------------

@pytest.fixture(scope="module")
def handler(tmp_path_factory):
    h = Handler(tmp_path_factory.mktemp("serverless-envelopes"),
                env={"WORKER_PRIVATE_KEY_B64": SERVER_KEY_B64, "ENVELOPE_MAX_AGE": "300"})
    yield h
    h.stop()


def code_of(answer) -> str:
    assert answer["status"] == "FAILED", answer
    return answer["error"].split(": ", 1)[0]


def test_serverless_refuses_low_order_epks_and_tampering(handler):
    for label, epk in LOW_ORDER_EPKS:
        env, _ = seal_request({"workflow": WORKFLOW}, SERVER_PUB_B64)
        assert code_of(handler.runsync({**env, "epk": b64(epk)})) == "decryption_failed", label
    for label, mutate, code in TAMPERS:
        env, _ = seal_request({"workflow": WORKFLOW}, SERVER_PUB_B64)
        assert code_of(handler.runsync(mutate(env))) == code, label


def test_serverless_accepts_an_envelope_once(handler):
    env, box = seal_request({"workflow": WORKFLOW}, SERVER_PUB_B64)
    answer = handler.runsync(env)
    assert answer["status"] == "COMPLETED" and open_reply(answer["output"], box)["outputs"]
    for label, mutate in REPLAYS:
        assert code_of(handler.runsync(mutate(env))) == "envelope_replayed", label


def test_serverless_envelope_age(handler):
    for label, ts, refused in AGES:
        answer = handler.runsync(envelope_for(aged(ts))[0])
        if refused:
            assert code_of(answer) == refused, label
        else:
            assert answer["status"] == "COMPLETED", (label, answer)


def test_serverless_failures_of_encrypted_jobs_are_sealed(handler):
    for label, payload, secret, code in LEAKS:
        env, box = seal_request(payload, SERVER_PUB_B64)
        answer = handler.runsync(env)  # the local API, like RunPod, keeps only `error` of a failure
        assert answer["status"] == "FAILED" and answer["error"] == code, (label, answer)
        assert secret not in json.dumps(answer), label
    assert _leaks(handler.log_path.read_text(errors="replace")) == []


def test_serverless_failure_posted_to_runpod_is_sealed_in_output(tmp_path):
    with FakeRunPod() as fake:
        h = Handler(tmp_path, env={**fake.env(), "WORKER_PRIVATE_KEY_B64": SERVER_KEY_B64}, api=False)
        try:
            for label, payload, secret, code in LEAKS:
                env, box = seal_request(payload, SERVER_PUB_B64)
                fake.add_job(f"leak-{code}", env)
                posted = fake.final(f"leak-{code}")
                assert posted["error"] == code and secret not in json.dumps(posted), (label, posted)
                opened = open_reply(posted["output"], box)  # the requester reads everything
                assert opened["error"].startswith(code) and secret in json.dumps(opened), label
        finally:
            h.stop()
