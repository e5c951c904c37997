"""`python -m cifar_spec ...` is `cifar-spec ...`: for a machine without the console script,
and for `torchrun -m cifar_spec`."""

import os

from cifar_spec.cli import main
from cifar_spec.distributed.launch import end_rank

if __name__ == "__main__":
    code = main()
    if "RANK" in os.environ:  # a rank that torchrun started (distributed.launch.end_rank says why)
        end_rank(code)
    raise SystemExit(code)
