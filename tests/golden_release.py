"""Build a small release in-process and digest every byte of it, for the golden-release test.

A release is what leaves the hospital, so its bytes are the behaviour that must not change by
accident. :func:`release_digests` builds one from a synthetic DIR with a fixed seed, a fixed
pseudonym secret, a fixed signing key and a fixed publication time, the way the extraction flow
does (``flows/extract.py``) but without Prefect:

    prepare_run -> process_batch -> build_manifest -> write_report -> gate_release
    -> publish_release(..., recipe_sha256=...)

for two projects in one local store: ``golden-basic`` (the default ``ridl-basic`` recipe) and
``golden-ps315`` (``ps3.15-basic`` with the options ``retain-long-modified-dates``,
``retain-patient-chars`` and ``clean-descriptors``). It returns ``{key: sha256 hex}`` for every
object in the store, keys relative to the store root.

What is pinned, so that two builds are byte-identical:

- the synthetic DIR (``synthesize(..., patients=6, sites=3, seed=20240611, ct_slices=2)``);
- the pseudonym secrets (``RIDL_SECRET_<PROJECT>``, see ``ridl.secrets``);
- the release signing key (``RIDL_SIGNING_KEY``, an Ed25519 key from fixed bytes), so the
  public key, its fingerprint and the release notes are fixed;
- the publication time (``publish_release(now=PUBLISHED_AT)``), so ``manifest.json``,
  ``RELEASE_NOTES.md`` and the project's ``releases.json`` index are fixed;
- the REB approval runs from 2000-01-01 to 2999-12-31, so the test never expires.

What is left out or masked, each because its bytes depend on the machine or the wall clock and
no argument pins them (found by building twice in two folders and comparing):

- ``manifest.json.sig`` is left out (:data:`EXCLUDED`): it signs ``manifest.json``, whose
  ``storage.root`` is the local store's absolute path, so it differs from folder to folder. The
  signing key is pinned, so ``release-signing.pub`` and the key's fingerprint are compared.
- ``manifest.json``: the store's absolute path (``storage.root``) is replaced by a fixed string
  before digesting; every other byte is compared.
- ``published.json`` (the gate's publication marker, ``flows.gate.gate_release``): its
  ``published_at`` is taken from the clock and is replaced by a fixed string; the counts, the
  dictionary size and the OCR note are compared.
- ``report.html``: one phrase, ``Generated <YYYY-MM-DD HH:MM> UTC``, is taken from the clock
  (``export.report.render_report``) and is replaced by a fixed string. Its inline SVG plots are
  made reproducible the way matplotlib documents it: ``SOURCE_DATE_EPOCH`` for the ``dc:date``
  metadata and ``rcParams["svg.hashsalt"]`` for the element ids (else a random UUID).

The run log (``runs/*.json``, timings only) is not written: it is made by the Prefect flow
(``flows.extract.write_run_log``) and holds nothing but times and counts. The gate runs without
OCR of burned-in text again (OCR is read once, by curation, in the stream), so the test needs
no OCR engine; the gate writes only its note about OCR into ``published.json``.

The golden file ``tests/data/golden-release.json`` was made with the code of commit 95b7fff,
before the "four floors" restructuring: a copy of this script whose ``_build`` imported the old
modules (``ridl.runplan.prepare_run``, ``ridl.work.process_batch`` and ``worker_for``,
``export.verify.gate_release``) and called ``publish_release`` without ``recipe_sha256`` (the
old one computed the recipe's digest itself), run in a worktree of that commit as
``PYTHONPATH=<worktree> python -m tests.golden_release_old --write ...``. The restructured code
gives the same file; built in the same folder, the two stores were byte-identical but for the
clock's time stamps above (``manifest.json.sig`` included). To regenerate it on purpose (after a
change that is meant to alter released bytes)::

    PYTHONPATH=$PWD python -m tests.golden_release --write tests/data/golden-release.json

and say in the commit message which bytes changed and why.

Regenerated once since (issue 13, stream verification): every study part gained its
``verification`` record and the gate's ``published.json`` now counts studies verified in the
stream, objects listed and objects audited; no object, manifest or signature input changed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

GOLDEN = Path(__file__).parent / "data" / "golden-release.json"
RELEASE = "r1"
SEED = 20240611
PUBLISHED_AT = dt.datetime(2024, 6, 11, 12, 0, 0, tzinfo=dt.UTC)
SIGNING_KEY_SEED = bytes(range(32))  # test-only Ed25519 key: never a real research office's

# (project id, recipe, PS3.15 options); the secret is fixed per project.
PROJECTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("golden-basic", "ridl-basic", ()),
    (
        "golden-ps315",
        "ps3.15-basic",
        ("retain-long-modified-dates", "retain-patient-chars", "clean-descriptors"),
    ),
)

# File names (under "<project>/<release>/") left out of the digests; see the module docstring.
EXCLUDED = ("manifest.json.sig",)
# File names digested after replacing what the clock wrote with a fixed string: name -> pattern.
MASKED = {
    "published.json": re.compile(rb'(?<="published_at": ")[^"]+'),
    "report.html": re.compile(rb"\d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC"),
}
SOURCE_DATE_EPOCH = str(int(PUBLISHED_AT.timestamp()))  # matplotlib's SVG metadata date
SVG_HASHSALT = "ridl golden release"  # matplotlib's SVG element ids


def _secret(project_id: str) -> str:
    return hashlib.sha256(f"golden release secret {project_id}".encode()).hexdigest()


def _signing_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.from_private_bytes(SIGNING_KEY_SEED)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _env_name(project_id: str) -> str:
    return "RIDL_SECRET_" + project_id.upper().replace("-", "_")


@contextlib.contextmanager
def _environment(home: Path) -> Iterator[None]:
    """RIDL_HOME, the secrets, the signing key and matplotlib's SVG salt and date for the build.

    The old values come back on exit.
    """
    import matplotlib

    values: dict[str, str | None] = {
        "RIDL_HOME": str(home),
        "RIDL_STORE": None,
        "RIDL_SECRETS_PROVIDER": None,
        "RIDL_SIGNING_KEY": _signing_pem(),
        "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH,
    }
    values.update({_env_name(p): _secret(p) for p, _, _ in PROJECTS})
    saved = {name: os.environ.get(name) for name in values}
    # Only this key is set and put back: matplotlib.rc_context would also undo the settings
    # that export.report makes when it is first imported inside the block.
    saved_salt = matplotlib.rcParams["svg.hashsalt"]
    try:
        for name, value in values.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        matplotlib.rcParams["svg.hashsalt"] = SVG_HASHSALT
        yield
    finally:
        matplotlib.rcParams["svg.hashsalt"] = saved_salt
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _create_projects() -> None:
    from ridl.projects import Project, Scope, create_project

    for project_id, recipe, options in PROJECTS:
        create_project(
            Project(
                id=project_id,
                reb_number="REB-2024-117",
                title="Golden release",
                pi="Test PI",
                approved=dt.date(2000, 1, 1),
                expires=dt.date(2999, 12, 31),
                scope=Scope(
                    dt.date(2000, 1, 1),
                    dt.date(2030, 12, 31),
                    ("CT", "CR", "US"),
                    ("SITE-A", "SITE-B", "SITE-C"),
                    deid_options=options,
                ),
                recipients=("Researcher One",),
                recipe=recipe,
                deid_options=options,
            )
        )


def _build(project_id: str, source: str, store_url: str) -> None:
    """What ``flows.extract.extract_run`` does for one release, in-process."""
    from export.manifest import build_manifest
    from export.release import publish_release
    from export.report import write_report
    from export.store import open_store
    from flows.gate import gate_release
    from flows.runplan import prepare_run, recipe_sha256
    from flows.work import process_batch, worker_for

    plan = prepare_run(project_id, RELEASE, source, store_url)
    process_batch(plan.ctx, plan.studies)
    store = open_store(store_url)
    build_manifest(store, plan.ctx.prefix, len(plan.studies), project_id, RELEASE)
    worker = worker_for(plan.ctx)
    years = {worker.study_key(s): s.study_date[:4] or "unknown" for s in plan.studies}
    write_report(store, plan.ctx.prefix, years)
    gate_release(project_id, RELEASE, store_url)
    publish_release(
        store_url,
        project_id,
        RELEASE,
        recipe_sha256=recipe_sha256(plan.ctx.recipe),
        now=PUBLISHED_AT,
    )


def digest_store(root: Path) -> dict[str, str]:
    """``{key: sha256 hex}`` of every file under a local store ``root``, less :data:`EXCLUDED`.

    Files named in :data:`MASKED` are digested with their time stamp replaced, and
    ``manifest.json`` with the store's absolute path (as JSON writes it) replaced.
    """
    root_json = json.dumps(str(root.resolve()))[1:-1].encode()
    digests: dict[str, str] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        key = path.relative_to(root).as_posix()
        if path.name in EXCLUDED:
            continue
        data = path.read_bytes()
        if path.name in MASKED:
            data = MASKED[path.name].sub(b"<time stamp>", data)
        if path.name == "manifest.json":
            data = data.replace(root_json, b"<store root>")
        digests[key] = hashlib.sha256(data).hexdigest()
    return digests


def release_digests(workdir: Path) -> dict[str, str]:
    """Build the golden releases under ``workdir`` and digest the store (see module doc).

    ``workdir`` must be empty or new; it receives ``dir/`` (the synthetic DIR), ``home/``
    (RIDL_HOME) and ``store/`` (the local object store). Returns ``{key: sha256 hex}``, keys
    relative to the store root.
    """
    from ridl.synth import synthesize

    workdir.mkdir(parents=True, exist_ok=True)
    synth = synthesize(workdir / "dir", patients=6, sites=3, seed=SEED, ct_slices=2)
    store_root = workdir / "store"
    with _environment(workdir / "home"):
        _create_projects()
        for project_id, _, _ in PROJECTS:
            _build(project_id, f"folder:{synth.root}", f"file:{store_root}")
    return digest_store(store_root)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--write", type=Path, help="write the digests as JSON to this file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ridl-golden-") as tmp:
        digests = release_digests(Path(tmp))
    text = json.dumps(digests, indent=1, sort_keys=True) + "\n"
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
