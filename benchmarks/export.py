"""Upload and pull throughput against a local S3 server, side by side with `aws s3 cp`.

One run, the same files, the same moto server on loopback:

* ridl upload  — S3Store.put_file from a pool of threads (HEAD for idempotency, then PUT with
  the SHA-256 sent), as the flow's workers upload;
* ridl re-upload — the same again: every object is already there, nothing is sent;
* ridl pull    — the researcher's client from a presigned manifest (parallel GETs, SHA-256 of
  every file, atomic rename into place);
* aws s3 cp --recursive, both ways, with the AWS CLI (v1, installed by the dev extra).

Prints a table (objects/s, MB/s, ratio to the AWS CLI) and writes
benchmarks/results/export.json. ``--quick`` makes it a few seconds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from export.pull import pull  # noqa: E402
from export.s3 import S3Settings, S3Store  # noqa: E402
from export.signing import load_or_create_signing_key, public_pem, sign  # noqa: E402
from tests.s3server import ADMIN_KEYS, MotoServer  # noqa: E402

BUCKET = "ridl-bench"


def make_files(folder: Path, count: int, size: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(count):
        path = folder / f"RS-BENCH{i % 7}" / f"{i:05d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
        files.append(path)
    return files


def timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def presigned_manifest(
    store: S3Store, prefix: str, files: list[Path], base: Path
) -> dict[str, Any]:
    """A signed manifest of the uploaded files with presigned URLs (what a grant gives)."""
    objects = []
    for path in files:
        data = path.read_bytes()
        objects.append(
            {
                "path": path.relative_to(base).as_posix(),
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "research_id": path.parent.name,
                "study_uid": "",
                "series_uid": "",
                "sop_uid": path.stem,
                "modality": "CT",
                "study_date": "",
            }
        )
    manifest = {
        "format": "ridl-release/1",
        "project": "bench",
        "release": "r1",
        "storage": {"type": "s3", "bucket": store.bucket, "prefix": store.s3_key(prefix)},
        "files": {},
        "objects": objects,
    }
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    key = load_or_create_signing_key()
    return {
        "format": "ridl-presigned-manifest/1",
        "manifest": text,
        "signature": sign(key, text.encode()),
        "public_key": public_pem(key),
        "urls": {o["path"]: store.presign_get(f"{prefix}/{o['path']}", 3600) for o in objects},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few small files")
    parser.add_argument("--files", type=int, default=None)
    parser.add_argument("--size-kib", type=int, default=None)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    count = args.files or (40 if args.quick else 300)
    size = 1024 * (args.size_kib or (64 if args.quick else 256))
    aws = shutil.which("aws") or str(Path(sys.executable).with_name("aws"))
    if not Path(aws).exists():
        sys.exit("the AWS CLI is not installed: pip install -e '.[dev]'")

    work = Path(tempfile.mkdtemp(prefix="ridl-bench-export-"))
    os.environ["RIDL_HOME"] = str(work / "home")
    os.environ.update(
        AWS_ACCESS_KEY_ID=ADMIN_KEYS["aws_access_key_id"],
        AWS_SECRET_ACCESS_KEY=ADMIN_KEYS["aws_secret_access_key"],
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    startup = timed(lambda: subprocess.run([aws, "--version"], check=True, capture_output=True))
    server = MotoServer(work).start()
    rows: list[dict[str, Any]] = []
    try:
        store = S3Store(
            S3Settings(bucket=BUCKET, endpoint_url=server.url, region="us-east-1"),
        )
        store.ensure_bucket()
        src = work / "src"
        files = make_files(src, count, size)
        total = count * size
        digests = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}

        def upload() -> None:
            with ThreadPoolExecutor(args.workers) as pool:
                list(
                    pool.map(
                        lambda p: store.put_file(
                            f"ridl/{p.relative_to(src).as_posix()}", p, digests[p]
                        ),
                        files,
                    )
                )

        def record(tool: str, direction: str, seconds: float, sent: int = total) -> None:
            rows.append(
                {
                    "tool": tool,
                    "direction": direction,
                    "objects": count,
                    "bytes": sent,
                    "seconds": round(seconds, 3),
                    "objects_per_s": round(count / seconds, 1),
                    "mb_per_s": round(sent / seconds / 1e6, 2),
                }
            )

        record("ridl S3Store", "upload", timed(upload))
        before = store.stats.uploaded
        record("ridl S3Store (already there)", "upload", timed(upload), sent=0)
        assert store.stats.uploaded == before, "idempotent: nothing sent again"

        endpoint = ["--endpoint-url", server.url, "--only-show-errors"]
        record(
            "aws s3 cp --recursive",
            "upload",
            timed(
                lambda: subprocess.run(
                    [aws, "s3", "cp", "--recursive", str(src), f"s3://{BUCKET}/awscli/", *endpoint],
                    check=True,
                )
            ),
        )

        grant = work / "grant.json"
        grant.write_text(json.dumps(presigned_manifest(store, "ridl", files, src)))
        dest = work / "pulled"
        report = None

        def do_pull() -> None:
            nonlocal report
            report = pull(grant, dest, workers=args.workers)

        record("ridl pull (presigned)", "download", timed(do_pull))
        assert report is not None and report.failed == {} and report.fetched == count
        record(
            "aws s3 cp --recursive",
            "download",
            timed(
                lambda: subprocess.run(
                    [
                        aws,
                        "s3",
                        "cp",
                        "--recursive",
                        f"s3://{BUCKET}/awscli/",
                        str(work / "aws"),
                        *endpoint,
                    ],
                    check=True,
                )  # fmt: skip
            ),
        )
        for path in files:
            rel = path.relative_to(src)
            assert (
                (dest / rel).read_bytes() == (work / "aws" / rel).read_bytes() == path.read_bytes()
            )
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    baseline = {r["direction"]: r for r in rows if r["tool"].startswith("aws")}
    for row in rows:
        row["ratio_vs_aws_cli"] = (
            round(row["mb_per_s"] / baseline[row["direction"]]["mb_per_s"], 2)
            if row["bytes"]
            else None
        )
    table = Table(
        title=f"export throughput: {count} files x {size // 1024} KiB, moto S3 on loopback"
    )
    for col in ("tool", "direction", "objects/s", "MB/s", "s", "vs aws cli"):
        table.add_column(col, justify="left" if col in ("tool", "direction") else "right")
    for r in rows:
        ratio = "-" if r["ratio_vs_aws_cli"] is None else f"{r['ratio_vs_aws_cli']:.2f}x"
        table.add_row(
            r["tool"], r["direction"], f"{r['objects_per_s']:.1f}", f"{r['mb_per_s']:.2f}",
            f"{r['seconds']:.2f}", ratio,
        )  # fmt: skip
    Console().print(table)
    print(f"(the AWS CLI rows include its start-up, {startup:.2f} s for `aws --version`)")
    out = ROOT / "benchmarks" / "results" / "export.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "benchmark": "export",
                "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
                "files": count,
                "file_size": size,
                "workers": args.workers,
                "server": "moto server mode over HTTP on loopback",
                "aws_cli_startup_s": round(startup, 3),
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"results: {out}")


if __name__ == "__main__":
    main()
