"""cifar_spec: the executable specification of a short PyTorch training tutorial.

One module per concept: ``losses`` (reference loss functions), ``model`` (the
tutorial's CNN), ``data`` (CIFAR-10 on disk, a synthetic stand-in, a split on
a device), ``files`` (the one atomic writer, the folder lock, the safe
unpickler), ``step`` (the training step, its options and the rule for them),
``manual_backward`` and ``cuda_graph`` (two of those options), ``loop`` (``fit``),
``checkpoint`` (the run folder), ``tutorial`` (the tutorial's own loop),
``bench`` and ``plot``. See README.md.
"""
