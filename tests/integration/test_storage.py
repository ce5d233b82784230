"""Both storage implementations behave alike; the blob one against a real Azurite."""

from __future__ import annotations

import uuid

import pytest

from dev.azurite import KEY
from sensor_scoring import storage as st


@pytest.fixture(params=["local", "azurite"])
def any_storage(request, tmp_path):
    if request.param == "local":
        return st.LocalStorage(tmp_path)
    return request.getfixturevalue("blob")


def test_round_trip_list_overwrite_delete(any_storage, tmp_path):
    s = any_storage
    s.write_bytes("box", "a/1.json", b"one")
    s.write_bytes("box", "a/2.json", b"two")
    s.write_bytes("box", "b/3.json", b"three")
    s.write_bytes("box", "a/1.json", b"uno")  # overwrite replaces
    assert s.read_bytes("box", "a/1.json") == b"uno"
    assert [b.name for b in s.list("box", "a/")] == ["a/1.json", "a/2.json"]
    assert s.list("box", "a/")[1].size == 3 and s.list("box", "a/")[0].last_modified.tzinfo is not None
    assert s.exists("box", "b/3.json") and not s.exists("box", "b/4.json")
    local = tmp_path / "up.bin"
    local.write_bytes(b"x" * 10_000)
    s.upload_file("box", "c/big.bin", local)
    assert s.read_bytes("box", "c/big.bin") == b"x" * 10_000
    assert s.delete_prefix("box", "a/") == 2
    assert [b.name for b in s.list("box")] == ["b/3.json", "c/big.bin"]


def test_missing_blob_and_container_are_plain_answers(any_storage, tmp_path):
    with pytest.raises(FileNotFoundError):
        any_storage.read_bytes("nothing-here", "x.json")
    with pytest.raises(FileNotFoundError):
        any_storage.download_file("nothing-here", "x.json", tmp_path / "x.json")
    assert any_storage.list("nothing-here") == [] and not (tmp_path / "x.json").exists()


def test_download_file_copies_a_blob_in_chunks_to_a_local_file(any_storage, tmp_path):
    """A blob larger than the SDK's first request and its chunks (32 MiB, then 4 MiB) arrives whole and exact:
    what a reader of a large partition (``iter_parquet``) opens instead of holding the blob's bytes."""
    data = uuid.uuid4().bytes * (40 * 2**20 // 16 + 3)
    source = tmp_path / "big.bin"
    source.write_bytes(data)
    any_storage.upload_file("box", "d/big.bin", source)
    any_storage.download_file("box", "d/big.bin", tmp_path / "copy.bin")
    assert (tmp_path / "copy.bin").read_bytes() == data


def test_descriptions_never_show_a_key(blob, azurite):
    assert KEY not in blob.describe() and "devstoreaccount1" in blob.describe()


def test_setting_picks_the_implementation(tmp_path, azurite):
    assert isinstance(st.open_storage(str(tmp_path)), st.LocalStorage)
    assert isinstance(st.open_storage(f"file://{tmp_path}"), st.LocalStorage)
    assert isinstance(st.open_storage(azurite.connection_string), st.BlobStorage)
    assert isinstance(st.open_storage("UseDevelopmentStorage=true"), st.BlobStorage)
    malformed = azurite.connection_string.replace("AccountName=", "Account=").replace("BlobEndpoint=", "Blob=")
    with pytest.raises(st.StorageSettingError, match="^SCORING_STORAGE is not a usable connection string") as refused:
        st.open_storage(malformed)
    assert KEY not in str(refused.value)


def test_local_storage_refuses_paths_that_escape(tmp_path):
    with pytest.raises(ValueError, match="not a plain relative name"):  # UnsafePathError is a ValueError
        st.LocalStorage(tmp_path).write_bytes("box", "../../etc/x", b"")


def test_uris_round_trip_and_reject_other_schemes():
    assert st.parse_uri(st.make_uri("staging", "runs/r/spec.json")) == ("staging", "runs/r/spec.json")
    for bad in ("https://acct.blob.core.windows.net/c/p", "az://only-container", "staging/x"):
        with pytest.raises(ValueError):
            st.parse_uri(bad)


ESCAPES = [
    "../predictions/secret.json",  # another container
    "a/../../outside.json",  # out of the root on a directory
    "/etc/hostname",
    "a/./b.json",
    "a//b.json",
    "a\\..\\b.json",
    "a\x00b.json",
    "a/\nb.json",
    "",
]


@pytest.mark.parametrize("path", ESCAPES, ids=repr)
def test_no_name_resolves_outside_its_container(any_storage, tmp_path, path):
    """Every call refuses a path that could leave its container, before any I/O (an HTTP stack may normalise
    dot segments, a directory resolves them)."""
    any_storage.write_bytes("predictions", "secret.json", b"other container")
    calls = [
        lambda: any_storage.read_bytes("box", path),
        lambda: any_storage.write_bytes("box", path, b"x"),
        lambda: any_storage.exists("box", path),
        lambda: any_storage.upload_file("box", path, __file__),
        lambda: any_storage.download_file("box", path, tmp_path / "out"),
    ]
    for call in calls:
        with pytest.raises(st.UnsafePathError, match="not a plain relative name"):
            call()
    assert any_storage.read_bytes("predictions", "secret.json") == b"other container"
    assert not (tmp_path.parent / "outside.json").exists()


@pytest.mark.parametrize("container", ["..", "../box", "a/b", "Box", "x", ""])
def test_a_container_is_a_container_name(any_storage, container):
    with pytest.raises(st.UnsafePathError, match="not a container name"):
        any_storage.read_bytes(container, "x.json")
    with pytest.raises(st.UnsafePathError):
        any_storage.list(container, "")


def test_listing_prefix_is_checked_too(any_storage):
    any_storage.write_bytes("box", "a/1.json", b"1")
    assert [b.name for b in any_storage.list("box", "a/")] == ["a/1.json"]
    with pytest.raises(st.UnsafePathError):
        any_storage.list("box", "../")


def test_directory_symlink_out_of_the_root_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.json").write_bytes(b"outside")
    root = tmp_path / "root"
    (root / "box").mkdir(parents=True)
    (root / "box" / "link").symlink_to(outside)
    with pytest.raises(st.UnsafePathError, match="escapes container"):
        st.LocalStorage(root).read_bytes("box", "link/x.json")


def test_conditional_write_checks_the_generation_it_read(any_storage):
    """The fence of commit: If-Match on the ETag (Azurite), a lock and the content's hash (directory)."""
    s, name = any_storage, f"m-{uuid.uuid4().hex}.json"  # the Azurite is shared by the session's tests
    assert s.generation("box", name) is None
    s.write_bytes_if("box", name, b"first", None)  # only if absent
    with pytest.raises(st.GenerationMismatch):
        s.write_bytes_if("box", name, b"again", None)
    first = s.generation("box", name)
    assert first
    s.write_bytes_if("box", name, b"second", first)
    second = s.generation("box", name)
    assert second and second != first
    with pytest.raises(st.GenerationMismatch):
        s.write_bytes_if("box", name, b"stale", first)  # a writer that read the first version loses
    assert s.read_bytes("box", name) == b"second"
    assert [b.name for b in s.list("box", name)] == [name]  # no lock or temporary file is listed


def test_racing_conditional_writes_have_exactly_one_winner(any_storage):
    import threading

    s, name = any_storage, f"m-{uuid.uuid4().hex}.json"
    s.write_bytes("box", name, b"base")
    read = s.generation("box", name)
    barrier, won, lost = threading.Barrier(8), [], []

    def write(n: int) -> None:
        barrier.wait()
        try:
            s.write_bytes_if("box", name, f"writer {n}".encode(), read)
            won.append(n)
        except st.GenerationMismatch:
            lost.append(n)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(won) == 1 and len(lost) == 7
    assert s.read_bytes("box", name) == f"writer {won[0]}".encode()
