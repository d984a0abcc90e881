"""The fuzz job's process (started by :func:`privlearn.bench.fuzz.runner.run_fresh`)."""

import json
import sys
from pathlib import Path

from privlearn.bench.fuzz.runner import run

if __name__ == "__main__":
    args = json.loads(sys.argv[1])
    run(
        args["formats"],
        args["cases"],
        seed=args["seed"],
        only=args["only"],
        timeout=args["timeout"],
        out=Path(sys.argv[2]),
        progress=lambda line: print(line, flush=True),
    )
