"""cifar_spec: the executable specification of a short PyTorch training tutorial.

Each module holds one concept: ``losses`` (reference loss functions), ``model``
(the tutorial's CNN), ``train`` (the training step). See README.md.
"""
