"""What others measured on real CIFAR-10, in one place: the figures the stand-in is calibrated
to, the spec's CIFAR-10 tier checks, and a run's loss.png is drawn beside.

Sources (docs/tutorial.md has them in full):
- the tutorial's exact run (this model, ToTensor only, SGD lr 0.01, batch 1, the
  10,000-image test split in file order): nine independent published runs;
- one of them printed all its epochs (a public copy of the course's
  optimizer.py, its output kept below the code): 16 finite sums, then nan;
- the test split's per-channel pixel statistics, as widely published;
- a linear softmax on raw pixels (course reports, about 33-39%) and this model
  trained on the train split (batch 64, lr 0.01, 10 epochs: 55.8%).
"""

from __future__ import annotations

TUTORIAL_IMAGES = 10_000  # the test split the tutorial trains on
TUTORIAL_LR = 0.01
TUTORIAL_BATCH = 1

# Epoch 1's loss sum over the nine runs: mean and sd, and the range they span.
EPOCH1_SUM = 18_741.0
EPOCH1_SD = 65.0
EPOCH1_RANGE = (18_646.0, 18_853.0)
EPOCH1_PER_IMAGE = EPOCH1_SUM / TUTORIAL_IMAGES  # 1.874
# Epoch 2 as a share of epoch 1: the range over the nine runs, and the mean and sd over
# the eight whose sums could be read again (0.8582 to 0.8659).
EPOCH2_RATIO = (0.858, 0.866)
EPOCH2_SHARE = 0.862
EPOCH2_SHARE_SD = 0.003

# The one published log of all 20 epochs: the sums of epochs 1-16; 17-20 were nan.
TWENTY_EPOCHS = (
    18746.1172,
    16176.6270,
    15429.7656,
    15898.4688,
    17447.1934,
    20178.0723,
    22422.9590,
    24016.4863,
    24387.7949,
    25872.6191,
    25907.2051,
    26921.4941,
    27253.4863,
    28706.1934,
    30713.5039,
    34206.9414,
)
FIRST_NAN_EPOCH = 17

# CIFAR-10's test split, per channel (R, G, B), pixels / 255.
PIXEL_MEAN = (0.4942, 0.4851, 0.4504)
PIXEL_SD = (0.2467, 0.2429, 0.2616)

LINEAR_PROBE_ACCURACY = 0.39  # softmax regression on raw pixels, test split
MODEL_ACCURACY = 0.56  # this model, train split, batch 64, lr 0.01, 10 epochs


def is_tutorial_run(images: int, lr: float, batch_size: int, shuffle: bool) -> bool:
    """Whether a run has the tutorial's own settings, so that the published curve applies."""
    return (images, lr, batch_size, shuffle) == (
        TUTORIAL_IMAGES,
        TUTORIAL_LR,
        TUTORIAL_BATCH,
        False,
    )
