"""Entry point of one run, inside a container or a local process:

    python -m runner.train.worker <job folder> --cache <cache folder>

Reads spec.json, loads the dataset from the cache, trains with the framework's trainer and
writes result.json. Exit codes: 0 done, 2 a problem the user can fix (message printed), 1 a crash.
Imports neither Ray nor Docker.
"""

import argparse
import os
import sys
import time
from pathlib import Path

from runner.errors import UserError
from runner.store.layout import JobPaths, link_refusal, write_json
from runner.train import data, usercode
from runner.train import frameworks as trainers
from runner.train.common import TrainContext, announce, log
from runner.train.tbextras import write_run_extras
from runner.train.usercode import CODE_ENV


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.train.worker", description=__doc__)
    parser.add_argument("job_dir", type=Path, help="results/<suite>/<job> holding spec.json")
    parser.add_argument("--cache", type=Path, required=True, help="dataset and weights cache")
    args = parser.parse_args(argv)
    paths = JobPaths(args.job_dir)
    # The driver checked the folder against the results root; here, where the files are written (a
    # container sees only its mounts), nothing under the job folder may lead out of it.
    linked = link_refusal(paths.dir, paths.dir)
    if linked:
        print(f"error: {linked}", flush=True)
        return 2
    spec_file = paths.read_spec()
    if spec_file is None:
        print(f"error: {paths.spec} is missing or invalid; the driver writes it before starting a run", flush=True)
        return 2
    spec = spec_file.spec
    if spec_file.code:  # the executor put it on the import path as this process sees it (GRIDRUN_CODE)
        usercode.use(Path(os.environ.get(CODE_ENV) or spec_file.code), shown=spec_file.code)
    for sub in spec_file.substitutions:
        announce(sub)
    try:
        log(
            f"job {spec_file.suite}/{spec_file.job}: {spec.framework} {spec.model.arch} "
            f"weights={spec.model.weights} dataset={spec.dataset.name}@{spec.dataset.image_size}px, pid {os.getpid()}"
        )
        log(f"visible GPUs: CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}")
        t0 = time.perf_counter()
        splits = data.load(spec.dataset, args.cache)
        data_seconds = time.perf_counter() - t0
        log(f"data: {splits.sizes()} images, {splits.num_classes} classes, loaded in {data_seconds:.1f}s")
        ctx = TrainContext(spec_file=spec_file, paths=paths, cache=args.cache, splits=splits, data_seconds=data_seconds)
        result = trainers.get(spec.framework)(ctx)
    except UserError as e:
        print(f"error: {e}", flush=True)
        return e.exit_code
    if not ctx.replica.primary:  # the first replica writes the job's files
        return 0
    write_json(paths.result, result)
    write_run_extras(paths, result)
    log(
        f"done: test accuracy {result.final_test_accuracy:.2%} (best epoch {result.best_epoch}: "
        f"{result.best_test_accuracy:.2%}), {result.timing.total_seconds:.1f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
