"""`python -m cifar_spec ...` is `cifar-spec ...`: for a machine without the console script,
and for `torchrun -m cifar_spec`."""

from cifar_spec.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
