"""How long a checkpoint takes to reach the results store: a local folder and a real S3 API (moto's server).

Prints, for each size (default 1 GiB; GRIDRUN_BENCH_MB to change): seconds and MB/s of Storage.upload
into a local folder and into an S3 bucket on 127.0.0.1, and the peak memory of the uploading process.
"""

import os
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from s3server import running_s3_server  # noqa: E402

from runner.store import Storage  # noqa: E402


def _file(path: Path, size: int) -> None:
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(size >> 20):
            f.write(block)


def _timed(what: str, size: int, upload) -> float:
    t0 = time.perf_counter()
    upload()
    took = time.perf_counter() - t0
    print(f"  {what:<28} {took:7.2f} s  {size / 2**20 / took:8.1f} MiB/s")
    return took


def main() -> None:
    size = int(os.environ.get("GRIDRUN_BENCH_MB", 1024)) << 20
    with tempfile.TemporaryDirectory(prefix="gridrun-bench-") as tmp:
        source = Path(tmp) / "last.pt"
        _file(source, size)
        print(f"checkpoint of {size / 2**20:.0f} MiB")
        local = Storage.open(Path(tmp) / "results", create=True)
        _timed("local folder (copy+fsync)", size, lambda: local.upload(source, "suite/job/checkpoints/last.pt"))
        with running_s3_server() as server:
            os.environ.update(server.env)
            server.make_bucket("bench")
            s3 = Storage.open("s3://bench/results", create=True)
            s3.check()
            took = _timed("s3 (moto on 127.0.0.1)", size, lambda: s3.upload(source, "suite/job/checkpoints/last.pt"))
            assert s3.files("suite/job/checkpoints") == {"last.pt": size}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory of the uploading process: {peak:.0f} MiB (the file: {size / 2**20:.0f} MiB)")
    print(f"a {size / 2**30:.2f} GiB checkpoint reaches the test bucket in {took:.1f} s")


if __name__ == "__main__":
    main()
