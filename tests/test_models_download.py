"""Downloads against a real 127.0.0.1 server that misbehaves on cue (tests/model_server.py)."""
from __future__ import annotations

import threading

import pytest

from services.config import SettingsError
from services.errors import AppError
from services.models.cache import cache_root
from services.models.downloader import Stopped
from tests.http_server import free_port
from tests.model_fixtures import dead_owner, fetch, litter, make_settings, payload, server, sha, target  # noqa: F401
from tests.model_server import Blob, Drop, Stall, Status

MiB = 1 << 20


def ranges(blob: Blob) -> list[str | None]:
    return [r["range"] for r in blob.requests]


def test_small_file_arrives_whole_verified_and_indexed(tmp_path, server):
    data = payload(300_000)
    blob = Blob(data)
    settings = make_settings(tmp_path)
    got = fetch(settings, server.route("/m", blob), data)
    assert got.how == "downloaded" and got.path.read_bytes() == data and got.sha256 == sha(data)
    assert litter(got.path.parent) == []
    assert ranges(blob) == ["bytes=0-"]
    assert fetch(settings, server.url + "/m", data).how == "present"
    assert len(blob.requests) == 1  # the second call read the index, not the network


def test_connection_dropped_mid_file_resumes_from_the_byte_it_reached(tmp_path, server):
    data = payload(600_000)
    blob = Blob(data, faults=[Drop(200_000), Drop(150_000)])
    got = fetch(make_settings(tmp_path), server.route("/m", blob), data)
    assert got.path.read_bytes() == data
    assert ranges(blob) == ["bytes=0-", "bytes=200000-", "bytes=350000-"]
    assert blob.sent == len(data)


def test_stalled_connection_is_dropped_after_the_timeout_and_resumed(tmp_path, server):
    data = payload(400_000)
    blob = Blob(data, faults=[Stall(100_000, seconds=5)])
    got = fetch(make_settings(tmp_path, DOWNLOAD_TIMEOUT="0.5"), server.route("/m", blob), data)
    assert got.path.read_bytes() == data
    assert ranges(blob) == ["bytes=0-", "bytes=100000-"]


def test_429_and_503_are_retried_honouring_retry_after(tmp_path, server):
    data = payload(50_000)
    blob = Blob(data, faults=[Status(429, retry_after="0"), Status(503), Status(502)])
    got = fetch(make_settings(tmp_path), server.route("/m", blob), data)
    assert got.path.read_bytes() == data and len(blob.requests) == 4


def test_server_that_ignores_range_still_gives_a_correct_file(tmp_path, server):
    data = payload(500_000)
    blob = Blob(data, faults=[Drop(300_000)], ranges=False)
    got = fetch(make_settings(tmp_path), server.route("/m", blob), data)
    assert got.path.read_bytes() == data
    assert len(blob.requests) == 2  # the second answer starts at 0; what we held was skipped


def test_wrong_bytes_are_quarantined_and_nothing_reaches_the_final_path(tmp_path, server):
    data = payload(200_000)
    blob = Blob(data, corrupt=True)
    settings = make_settings(tmp_path)
    with pytest.raises(AppError) as err:
        fetch(settings, server.route("/m", blob), data)
    assert err.value.code == "checksum_mismatch"
    t = target(settings)
    assert not t.path.exists() and litter(t.folder) == []
    quarantined = list((cache_root(settings) / ".quarantine" / "checkpoints").iterdir())
    assert [p.name.split(".safetensors.")[0] for p in quarantined] == ["m"]
    assert len(blob.requests) == 1  # a fresh download that mismatches is not retried


@pytest.mark.parametrize("status", [404, 403, 401, 410])
def test_refusals_fail_at_once_with_their_status(tmp_path, server, status):
    blob = Blob(b"x", faults=[Status(status)])
    with pytest.raises(AppError) as err:
        fetch(make_settings(tmp_path), server.route("/m", blob), b"x")
    assert err.value.code == f"download_failed:{status}"
    assert len(blob.requests) == 1


def test_persistent_503_gives_up_after_the_retries(tmp_path, server):
    blob = Blob(b"x", faults=[Status(503)] * 10)
    with pytest.raises(AppError) as err:
        fetch(make_settings(tmp_path, DOWNLOAD_RETRIES="2"), server.route("/m", blob), b"x")
    assert err.value.code == "download_failed:503" and len(blob.requests) == 3


def test_unreachable_host_fails_as_unreachable(tmp_path):
    with pytest.raises(AppError) as err:
        fetch(make_settings(tmp_path, DOWNLOAD_RETRIES="1"), f"http://127.0.0.1:{free_port()}/m", b"x")
    assert err.value.code == "download_failed:unreachable"


def test_announced_size_other_than_expected_is_refused_before_any_byte_is_written(tmp_path, server):
    data = payload(10_000)
    settings = make_settings(tmp_path)
    with pytest.raises(AppError) as err:
        fetch(settings, server.route("/m", Blob(data)), data, size=20_000)
    assert err.value.code == "size_mismatch"
    t = target(settings)
    assert not t.path.exists() and litter(t.folder) == []


def test_big_file_comes_in_parallel_ranged_pieces(tmp_path, server):
    data = payload(3 * MiB + 12345)
    blob = Blob(data)
    got = fetch(make_settings(tmp_path, DOWNLOAD_SEGMENTS="4"), server.route("/m", blob), data)
    assert got.path.read_bytes() == data
    probe, *pieces = ranges(blob)
    expected = {f"bytes={at}-{min(at + 262144, len(data)) - 1}" for at in range(0, len(data), 262144)}
    assert probe == "bytes=0-" and set(pieces) == expected and len(pieces) == 13


def test_pieces_survive_drops_and_a_503(tmp_path, server):
    data = payload(2 * MiB)
    blob = Blob(data, faults=[None, Drop(100_000), Status(503), Drop(5)])
    got = fetch(make_settings(tmp_path, DOWNLOAD_SEGMENTS="3"), server.route("/m", blob), data)
    assert got.path.read_bytes() == data


def test_resume_adopts_the_partial_a_dead_process_left(tmp_path, server):
    data = payload(800_000)
    settings = make_settings(tmp_path)
    t = target(settings)
    t.folder.mkdir(parents=True)
    t.partial_path(dead_owner()).write_bytes(data[:300_000])
    blob = Blob(data)
    got = fetch(settings, server.route("/m", blob), data)
    assert got.path.read_bytes() == data
    assert ranges(blob) == ["bytes=300000-"] and blob.sent == 500_000
    assert litter(t.folder) == []


def test_a_resumed_prefix_that_was_wrong_is_replaced_by_a_fresh_download(tmp_path, server):
    data = payload(400_000)
    settings = make_settings(tmp_path)
    t = target(settings)
    t.folder.mkdir(parents=True)
    t.partial_path(dead_owner()).write_bytes(b"\0" * 100_000)
    blob = Blob(data)
    got = fetch(settings, server.route("/m", blob), data)
    assert got.path.read_bytes() == data
    assert ranges(blob) == ["bytes=100000-", "bytes=0-"]


def test_partial_holding_the_whole_file_is_finished_without_a_request(tmp_path, server):
    data = payload(100_000)
    settings = make_settings(tmp_path)
    t = target(settings)
    t.folder.mkdir(parents=True)
    t.partial_path(dead_owner()).write_bytes(data)
    blob = Blob(data)
    assert fetch(settings, server.route("/m", blob), data).path.read_bytes() == data
    assert blob.requests == []


def test_unknown_size_and_sha_are_learned_from_the_stream(tmp_path, server):
    data = payload(70_000)
    settings = make_settings(tmp_path)
    got = fetch(settings, server.route("/m", Blob(data)), data, size=None, sha256=None)
    assert got.size == len(data) and got.sha256 == sha(data)


def test_stop_between_chunks_keeps_the_partial_for_later(tmp_path, server):
    data = payload(4 * MiB)
    blob = Blob(data, rate=2 * MiB)
    settings = make_settings(tmp_path, DOWNLOAD_SEGMENTS="1")
    stop = threading.Event()
    seen = []

    def on_progress(done, total):
        seen.append(done)
        if done >= MiB:
            stop.set()
        return True

    with pytest.raises(Stopped):
        fetch(settings, server.route("/m", blob), data, on_progress=on_progress, stop=stop)
    t = target(settings)
    assert not t.path.exists()
    [partial] = t.partials()
    assert MiB <= partial.stat().st_size < len(data)


def test_same_sha256_under_another_name_is_hard_linked_not_downloaded(tmp_path, server):
    data = payload(120_000)
    settings = make_settings(tmp_path)
    blob = Blob(data)
    first = fetch(settings, server.route("/m", blob), data, name="a.safetensors")
    second = fetch(settings, server.url + "/m", data, name="b.safetensors")
    assert second.how == "linked" and len(blob.requests) == 1
    assert first.path.stat().st_ino == second.path.stat().st_ino


@pytest.mark.parametrize("env", [{"DOWNLOAD_SEGMENTS": "0"}, {"DOWNLOAD_PIECE_BYTES": "100"},
                                 {"DOWNLOAD_RETRIES": "-1"}, {"DOWNLOAD_LOCKS": "maybe"}])
def test_unusable_download_settings_are_refused(tmp_path, env):
    with pytest.raises(SettingsError):
        make_settings(tmp_path, **env)


def test_a_model_folder_that_cannot_be_written_is_download_failed_io(tmp_path, server):
    settings = make_settings(tmp_path)
    t = target(settings)
    t.root.mkdir(parents=True)
    t.folder.write_text("a file where the type folder should be")
    with pytest.raises(AppError) as err:
        fetch(settings, server.route("/m", Blob(b"abc")), b"abc")
    assert err.value.code == "download_failed:io" and str(t.path) in err.value.detail
