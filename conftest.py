"""The checkout's pytest configuration is the package's own (cifar_spec/conftest.py), so that
`pytest` here and `pytest --pyargs cifar_spec` anywhere run the spec alike."""

from cifar_spec.conftest import *  # noqa: F403
