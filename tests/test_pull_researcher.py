"""`ridl pull` as a researcher lives it (issue 15, defect 8): the shipped key and its
fingerprint, missing or bad credentials, retractions on the researcher's disk, one release per
folder."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from export.pull import DiskFull, PullError, pull
from export.signing import fingerprint
from flows.cli import app
from ridl.synth import synthesize
from tests.conftest import make_project
from tests.export_support import make_bucket, run_and_publish, s3_url
from tests.s3server import MotoServer

runner = CliRunner()


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def local_release(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A release published once for the module in a local store (file:), under its own
    RIDL_HOME; the pulls read it from the store's folder."""
    base = tmp_path_factory.mktemp("local-release")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RIDL_HOME", str(base / "home"))
        project = make_project("pull-local")
        synth = synthesize(base / "dir", patients=3, sites=2, seed=11)
        store = base / "library"
        run_and_publish(project.id, "r1", f"folder:{synth.root}", f"file:{store}")
    folder = store / project.id / "r1"
    yield {
        "folder": folder,
        "manifest": json.loads((folder / "manifest.json").read_bytes()),
        "key": (folder / "release-signing.pub").read_text(),
    }


def test_shipped_key_is_used_and_its_whole_fingerprint_printed(
    local_release: dict[str, Any], tmp_path: Path
) -> None:
    folder: Path = local_release["folder"]
    expected = fingerprint(local_release["key"])
    dest = tmp_path / "data"
    result = runner.invoke(app, ["pull", str(folder / "manifest.json"), "--dest", str(dest)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert f"signing key {expected} (release-signing.pub beside manifest.json)" in text
    assert "compare it with the fingerprint in the release notes" in text
    assert expected in (folder / "RELEASE_NOTES.md").read_text(), "the notes carry the same one"
    assert (dest / "manifest.csv").is_file()

    # An explicit --public-key wins over the shipped one: another key is refused.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from export.signing import public_pem

    other = tmp_path / "other.pub"
    other.write_text(public_pem(Ed25519PrivateKey.generate()))
    args = ["pull", str(folder / "manifest.json"), "--dest", str(dest), "--public-key"]
    refused = runner.invoke(app, [*args, str(other)])
    assert refused.exit_code == 2 and len(_error_lines(refused.output)) == 1
    assert "Traceback" not in refused.output
    given = tmp_path / "office.pub"
    given.write_text(local_release["key"])
    again = runner.invoke(app, [*args, str(given)])
    assert again.exit_code == 0, again.output
    assert f"signing key {expected} (--public-key)" in " ".join(again.output.split())


def test_no_key_anywhere_is_one_error_line(local_release: dict[str, Any], tmp_path: Path) -> None:
    folder: Path = local_release["folder"]
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("manifest.json", "manifest.json.sig"):
        shutil.copy(folder / name, bare / name)
    dest = tmp_path / "data"
    result = runner.invoke(app, ["pull", str(bare / "manifest.json"), "--dest", str(dest)])
    assert result.exit_code == 2
    lines = _error_lines(result.output)
    assert len(lines) == 1 and "--public-key" in lines[0] and "release-signing.pub" in lines[0]
    assert not dest.exists()


def test_a_folder_holds_one_release(local_release: dict[str, Any], tmp_path: Path) -> None:
    folder: Path = local_release["folder"]
    dest = tmp_path / "data"
    first = pull(folder / "manifest.json", dest)
    assert first.failed == {}
    marker = json.loads((dest / ".ridl-pull" / "release.json").read_text())
    assert (marker["project"], marker["release"]) == ("pull-local", "r1")

    # The same release again resumes (nothing fetched twice).
    again = pull(folder / "manifest.json", dest)
    assert again.fetched == 0 and again.skipped_verified == first.files

    # Another release (here: the same files relabelled and re-signed as r2) is refused.
    other = _resigned_as(local_release, tmp_path / "r2", "r2")
    before = sorted(p.relative_to(dest) for p in dest.rglob("*"))
    result = runner.invoke(app, ["pull", str(other), "--dest", str(dest)])
    assert result.exit_code == 2, result.output
    lines = _error_lines(" ".join(result.output.split()).replace(" error:", "\nerror:"))
    assert len(lines) == 1
    assert "pull-local/r1" in lines[0] and "pull-local/r2" in lines[0]
    assert "another --dest" in lines[0]
    assert sorted(p.relative_to(dest) for p in dest.rglob("*")) == before, "nothing touched"

    # A folder a release was copied into with another client (manifest.json at its root).
    copied = tmp_path / "copied"
    copied.mkdir()
    shutil.copy(folder / "manifest.json", copied / "manifest.json")
    with pytest.raises(PullError, match="already holds release pull-local/r1"):
        pull(other, copied)


def _resigned_as(release: dict[str, Any], folder: Path, name: str) -> Path:
    """The module's manifest under another release name, signed with a key shipped beside it."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from export.signing import public_pem, sign

    key = Ed25519PrivateKey.generate()
    manifest = dict(release["manifest"], release=name)
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    folder.mkdir()
    (folder / "manifest.json").write_text(text)
    (folder / "manifest.json.sig").write_text(sign(key, text.encode()))
    (folder / "release-signing.pub").write_text(public_pem(key))
    return folder / "manifest.json"


def test_a_refused_pull_leaves_no_folder(local_release: dict[str, Any], tmp_path: Path) -> None:
    folder: Path = local_release["folder"]
    dest = tmp_path / "a" / "b"
    with pytest.raises(DiskFull):
        pull(folder / "manifest.json", dest, keep_free=10**18)
    assert not dest.exists()
    existing = tmp_path / "mine"
    existing.mkdir()
    with pytest.raises(DiskFull):
        pull(folder / "manifest.json", existing, keep_free=10**18)
    assert list(existing.iterdir()) == [], "an existing folder is left as it was"


@pytest.fixture
def s3_release(s3_env: MotoServer, tmp_path: Path) -> dict[str, Any]:
    """A release published in the S3 test server; its manifest, signature and key downloaded
    into a folder as a researcher with credentials has them."""
    project = make_project()
    synth = synthesize(tmp_path / "dir", patients=3, sites=2, seed=5)
    url = s3_url(s3_env.url)
    store = make_bucket(url)
    run_and_publish(project.id, "r1", f"folder:{synth.root}", url)
    folder = tmp_path / "release"
    folder.mkdir()
    for name in ("manifest.json", "manifest.json.sig", "release-signing.pub"):
        (folder / name).write_bytes(store.get_bytes(f"{project.id}/r1/{name}"))
    return {
        "url": url,
        "store": store,
        "project": project,
        "synth": synth,
        "manifest": folder / "manifest.json",
    }


def test_missing_or_bad_credentials_are_one_line_and_leave_no_folder(
    s3_release: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = str(s3_release["manifest"])
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    dest = tmp_path / "out" / "r1"
    result = runner.invoke(app, ["pull", manifest, "--dest", str(dest)])
    assert result.exit_code == 2, result.output
    lines = _error_lines(result.output)
    assert len(lines) == 1 and "no AWS credentials" in lines[0]
    assert "Traceback" not in result.output and not dest.exists()

    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    result = runner.invoke(app, ["pull", manifest, "--dest", str(dest)])
    assert result.exit_code == 2, result.output
    lines = _error_lines(result.output)
    assert len(lines) == 1 and "AWS_PROFILE" in lines[0]
    assert "Traceback" not in result.output and not dest.exists()


def test_retracted_files_on_disk_are_named_and_deleted_on_request(
    s3_release: dict[str, Any], tmp_path: Path
) -> None:
    from export.access import grant_access

    project = s3_release["project"]
    url = s3_release["url"]

    def grant() -> Path:
        document = grant_access(url, project.id, "r1", project.recipients[0], 1, presign=True)
        path = tmp_path / "grant.json"
        path.write_text(json.dumps(document))
        return path

    dest = tmp_path / "data"
    assert pull(grant(), dest).failed == {}
    m1 = json.loads(s3_release["manifest"].read_bytes())
    subjects = sorted({o["research_id"] for o in m1["objects"]})
    withdrawn = subjects[0]
    theirs = sorted(o["path"] for o in m1["objects"] if o["research_id"] == withdrawn)
    assert all((dest / p).is_file() for p in theirs)

    withdraw = runner.invoke(
        app, ["release", "withdraw", "--project", project.id, "--research-id", withdrawn.lower()]
    )
    assert withdraw.exit_code == 0, withdraw.output
    run_and_publish(project.id, "r2", f"folder:{s3_release['synth'].root}", url, reindex=True)

    # A new grant of r1 lists the retraction; the files already on disk are named.
    renewed = grant()
    result = runner.invoke(app, ["pull", str(renewed), "--dest", str(dest)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert f"{len(theirs)} files in {dest} were retracted since publication" in text
    for path in theirs:
        assert f"{path} (subject-withdrew)" in text
    assert "--delete-retracted" in text
    assert all((dest / p).is_file() for p in theirs), "listed, not touched"

    result = runner.invoke(app, ["pull", str(renewed), "--dest", str(dest), "--delete-retracted"])
    assert result.exit_code == 0, result.output
    assert f"deleted {len(theirs)} files retracted" in " ".join(result.output.split())
    assert not (dest / withdrawn).exists(), "no empty folders left"
    kept = [o["path"] for o in m1["objects"] if o["research_id"] != withdrawn]
    assert kept and all((dest / p).is_file() for p in kept)

    # Pulling r2 into the folder that holds r1 is refused, naming both.
    document = grant_access(url, project.id, "r2", project.recipients[0], 1, presign=True)
    r2 = tmp_path / "grant-r2.json"
    r2.write_text(json.dumps(document))
    result = runner.invoke(app, ["pull", str(r2), "--dest", str(dest)])
    assert result.exit_code == 2
    assert f"{project.id}/r1" in result.output and f"{project.id}/r2" in result.output
