"""Data-parallel training on torch.distributed, one concept a module: ``launch`` (the world
torchrun describes, joining and leaving its process group, a rank's end), ``agreement`` (what
every rank must hear before the first step: a task some ranks do, rank 0's value, the same
settings) and ``sharding`` (each rank's part of every batch, and DDP with its gradient weighted
by that part).
"""
