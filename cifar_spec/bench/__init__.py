"""The measurement harness, beside the tutorial's training in `cifar_spec`: the cases, worker
processes, paired rounds, statistics, figures, the suite, the gate, compare and the DDP bench."""
