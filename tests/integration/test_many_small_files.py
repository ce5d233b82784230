"""Folders of many small blobs: ``Storage.read_many`` and the plain List Blobs pages answer what the SDK's own
downloader and listing answer, on a directory, on Azurite with the account key and with SAS only; and the
one-parse read of many small files keeps the per-file accounting."""

from __future__ import annotations

import gzip
import json

import pandas as pd
import pytest
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import ContentSettings

from sensor_scoring import storage as st
from sensor_scoring.storage import blob as blob_storage
from sensor_scoring.windows import formats, parse_window_file, read_landed_files

pytestmark = [pytest.mark.azurite]

#: Names a plain GET must quote as the SDK does: spaces, percent signs, non-ASCII, query and fragment marks.
NAMES = ["a/plain.json", "a/with space.json", "a/100%.json", "a/caf\u00e9.json", "a/q?x=1#frag.json", "a/plus+.json"]


@pytest.fixture(params=["local", "key", "sas"])
def any_storage(request, tmp_path, containers, azurite):
    """The same container on each kind of storage, writable (the SAS one gets read+write)."""
    if request.param == "local":
        return st.LocalStorage(tmp_path)
    keyed = request.getfixturevalue("blob")
    if request.param == "key":
        return keyed
    keyed.write_bytes(containers.windows, "created.txt", b"")  # a SAS cannot create its container
    setting = st.make_sas_setting(azurite.connection_string, read=[], read_write=[containers.windows], hours=1)
    return st.open_storage(setting)


def _row(minute: int) -> dict[str, object]:
    return {
        "device_id": "dev-1",
        "tag": "temp",
        "window_end": f"2026-11-25T16:{minute:02d}:00.0000000Z",
        "value_avg": minute / 7,
        "value_min": 0.5,
        "value_max": 2.5,
        "value_std": 0.25,
        "reading_count": 60,
    }


@pytest.mark.parametrize("concurrency", [1, 8])
def test_read_many_answers_what_read_bytes_answers(any_storage, containers, concurrency):
    c = containers.windows
    contents = {name: f"{number} {name}".encode() * (number + 1) for number, name in enumerate(NAMES)}
    contents["a/empty.json"] = b""
    for name, data in contents.items():
        any_storage.write_bytes(c, name, data)
    names = sorted(contents)
    assert any_storage.read_many(c, names, concurrency=concurrency) == [any_storage.read_bytes(c, n) for n in names]
    assert any_storage.read_many(c, names, concurrency=concurrency) == [contents[n] for n in names]
    assert any_storage.read_many(c, [], concurrency=concurrency) == []
    with pytest.raises(FileNotFoundError):
        any_storage.read_many(c, [names[0], "a/missing.json"], concurrency=concurrency)


def test_read_many_decodes_a_content_encoding_as_the_downloader_does(blob, containers):
    """A blob stored with Content-Encoding gzip: the downloader decodes it, and so read_many gives it decoded."""
    packed = gzip.compress(b'{"device_id": "d"}\n' * 50)
    settings = ContentSettings(content_encoding="gzip", content_type="application/json")
    blob.write_bytes(containers.windows, "seed.txt", b"")
    blob._container(containers.windows).upload_blob("g/packed.json", packed, content_settings=settings)
    assert blob.read_many(containers.windows, ["g/packed.json"]) == [gzip.decompress(packed)]
    assert blob.read_bytes(containers.windows, "g/packed.json") == gzip.decompress(packed)


def test_listing_pages_give_the_sdk_listing(any_storage, containers, monkeypatch):
    c = containers.windows
    for name in NAMES:
        any_storage.write_bytes(c, name, name.encode())
    any_storage.write_bytes(c, "b/other.json", b"{}")
    monkeypatch.setattr(blob_storage, "LIST_PAGE_SIZE", 2)  # several pages, joined by their markers
    listed = any_storage.list(c, "a/")
    assert [b.name for b in listed] == sorted(NAMES)
    assert [b.size for b in listed] == [len(n.encode()) for n in sorted(NAMES)]
    assert all(b.last_modified.tzinfo is not None for b in listed)
    if not isinstance(any_storage, st.LocalStorage):
        client = any_storage._container(c)
        sdk = [(b.name, b.size, b.last_modified) for b in client.list_blobs(name_starts_with="a/")]
        assert [(b.name, b.size, b.last_modified) for b in listed] == sdk
    assert "b/other.json" in [b.name for b in any_storage.list(c)]


def test_an_expired_sas_is_refused_for_listing_and_reading_many(blob, containers, azurite):
    blob.write_bytes(containers.windows, "w/1.json", b"{}")
    setting = st.make_sas_setting(
        azurite.connection_string,
        read=[containers.windows],
        read_write=[],
        hours=1,
        now=pd.Timestamp.now(tz="UTC").to_pydatetime() - pd.Timedelta(hours=3),
    )
    expired = st.open_storage(setting)
    for call in (
        lambda: expired.list(containers.windows, "w/"),
        lambda: expired.read_many(containers.windows, ["w/1.json"]),
    ):
        with pytest.raises(HttpResponseError) as refused:
            call()
        assert refused.value.status_code == 403


def test_many_small_files_on_azurite_keep_their_per_file_accounting(any_storage, containers):
    """Forty one-window files, one empty, one garbage and one not UTF-8: the clean ones read together give the
    windows each gives alone, and every file is read, empty or quarantined whole with its own reason."""
    c, folder = containers.windows, "2026/11/25/16"
    clean = [f"{folder}/0_{m:02d}_1.json" for m in range(40)]
    for m, name in enumerate(clean):
        any_storage.write_bytes(c, name, (json.dumps(_row(m)) + "\n").encode())
    any_storage.write_bytes(c, f"{folder}/empty.json", b"")
    any_storage.write_bytes(c, f"{folder}/garbage.json", b"\x00\x01 not windows")
    any_storage.write_bytes(c, f"{folder}/latin1.json", '{"tag": "caf\xe9"}'.encode("latin-1"))
    read = read_landed_files(any_storage, c, [folder])
    assert len(read.files) == 43 and sorted(read.read) == clean
    assert read.empty == [f"{folder}/empty.json"]
    assert sorted((u.file.rsplit("/", 1)[1], u.reason) for u in read.corrupt) == [
        ("garbage.json", "unsupported_format"),
        ("latin1.json", "not_utf8"),
    ]
    alone = pd.concat([parse_window_file(n, any_storage.read_bytes(c, n)) for n in clean], ignore_index=True)
    key = ["window_end"]
    pd.testing.assert_frame_equal(
        read.windows.sort_values(key).reset_index(drop=True), alone.sort_values(key).reset_index(drop=True)
    )
    assert read.rejected.empty
    # one row of the wrong type among them: every file is then read alone, the row rejected with its reason
    bad = dict(_row(59), value_avg="3")
    any_storage.write_bytes(c, f"{folder}/0_99_1.json", (json.dumps(bad) + "\n").encode())
    dirty = read_landed_files(any_storage, c, [folder])
    assert len(dirty.windows) == 40 and list(dirty.rejected["reason"]) == ["wrong_type"]
    assert len(dirty.files) == 44 and len(dirty.read) == 41


def test_sequential_and_concurrent_folder_reads_agree(blob, containers, monkeypatch):
    c, folder = containers.windows, "2026/11/25/17"
    for m in range(20):
        blob.write_bytes(c, f"{folder}/0_{m:02d}_1.json", (json.dumps(_row(m)) + "\n").encode())
    concurrent = read_landed_files(blob, c, [folder])
    monkeypatch.setattr(formats, "DOWNLOAD_CONCURRENCY", 1)
    sequential = read_landed_files(blob, c, [folder])
    pd.testing.assert_frame_equal(concurrent.windows, sequential.windows)
    assert concurrent.files == sequential.files
