"""The tutorial's CNN: its shapes, its size, and what it refuses."""

import pytest
import torch

from cifar_spec.model import CifarNet, count_parameters, format_summary, layer_summary


@pytest.fixture
def model() -> CifarNet:
    torch.manual_seed(0)
    return CifarNet()


@pytest.mark.parametrize("batch", [1, 2, 64, 0], ids=lambda n: f"batch-{n}")
def test_the_model_outputs_ten_class_scores_per_image(model, batch, device):
    images = torch.rand(batch, 3, 32, 32, device=device)
    assert model.to(device)(images).shape == (batch, 10)


def test_the_model_has_exactly_145578_parameters(model):
    assert count_parameters(model) == 145_578


def test_each_layer_gives_the_shape_the_tutorial_describes(model):
    shapes = [shape for _, shape, _ in layer_summary(model)]
    assert shapes == [
        (32, 32, 32),
        (32, 16, 16),
        (32, 16, 16),
        (32, 8, 8),
        (64, 8, 8),
        (64, 4, 4),
        (1024,),
        (64,),
        (10,),
    ]


def test_the_layer_parameter_counts_add_up_to_the_total(model):
    counts = [params for _, _, params in layer_summary(model)]
    # 5x5 kernels: 3*32*25+32, 32*32*25+32, 32*64*25+64; linear: 1024*64+64, 64*10+10
    assert counts == [2432, 0, 25632, 0, 51264, 0, 0, 65600, 650]
    assert "145,578" in format_summary(model)


# Each bad input: (images, what the message says was expected, what it says came).
BAD_INPUTS = {
    "unbatched-image": (torch.rand(3, 32, 32), "add a batch dimension", "(3, 32, 32)"),
    "flat-vector": (torch.rand(4, 3072), "(N, 3, 32, 32)", "(4, 3072)"),
    "grayscale": (torch.rand(4, 1, 32, 32), "3 colour channels", "got 1"),
    "height-width-channels": (torch.rand(4, 32, 32, 3), "3 colour channels", "(4, 32, 32, 3)"),
    "mnist-28x28": (torch.rand(4, 3, 28, 28), "32x32 images", "got 28x28"),
    "uint8-from-disk": (
        torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8),
        "/ 255",
        "torch.uint8",
    ),
}


@pytest.mark.parametrize("images, expected, came", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_a_bad_input_is_refused_with_what_was_expected_and_what_came(model, images, expected, came):
    with pytest.raises(ValueError) as info:
        model(images)
    assert expected in str(info.value)
    assert came in str(info.value)


def test_a_bad_input_is_refused_before_any_layer_runs(model):
    ran = []
    model.layers[0].register_forward_pre_hook(lambda *_: ran.append(True))
    with pytest.raises(ValueError):
        model(torch.rand(1, 3, 28, 28))
    assert ran == []


def test_the_summary_names_the_layers_as_the_tutorial_writes_them(model):
    names = [name for name, _, _ in layer_summary(model)]
    assert names == [
        "Conv2d(3, 32, 5, padding=2)",
        "MaxPool2d(2)",
        "Conv2d(32, 32, 5, padding=2)",
        "MaxPool2d(2)",
        "Conv2d(32, 64, 5, padding=2)",
        "MaxPool2d(2)",
        "Flatten()",
        "Linear(1024, 64)",
        "Linear(64, 10)",
    ]


WRONG_KIND = {
    "float64": (torch.rand(2, 3, 32, 32, dtype=torch.float64), "expected torch.float32 images"),
    "float16": (torch.rand(2, 3, 32, 32).half(), "got torch.float16; convert with images.to"),
    "meta": (torch.empty(2, 3, 32, 32, device="meta"), "meta device, which holds shapes but no"),
}


@pytest.mark.parametrize("images, message", WRONG_KIND.values(), ids=WRONG_KIND.keys())
def test_images_of_another_dtype_or_on_the_meta_device_are_refused_at_the_door(
    model, images, message
):
    ran = []
    model.layers[0].register_forward_pre_hook(lambda *_: ran.append(True))
    with pytest.raises(ValueError, match=message):
        model(images)
    assert ran == []
