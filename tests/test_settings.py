"""Settings: checked once when made, built from typed values (the command line) or text (the sweep), and the
torch-free names of choices.py agree with the modules that build things from them."""
import subprocess
import sys
from dataclasses import FrozenInstanceError

import pytest

from masked_torch.analysis import choices
from masked_torch.analysis.settings import Settings, SettingsError


def test_defaults_are_the_readme_run():
    s = Settings()
    assert (s.model, s.data, s.depth, s.batch_size, s.mask, s.stacks) == ("stack", "photos", 4, 4, "padding",
                                                                          ("conv", "pconv", "mconv"))
    assert s.to_dict()["stacks"] == ["conv", "pconv", "mconv"]


@pytest.mark.parametrize("changes, words", [
    (dict(model="vgg"), ["'model'", "stack, resnet18, unet", "'vgg'"]),
    (dict(mask="circles"), ["'mask'", "padding, holes"]),
    (dict(activation="elu"), ["'activation'"]),
    (dict(depth=0), ["'depth'", "positive integer", "0"]),
    (dict(batch_size=True), ["'batch_size'"]),
    (dict(num_images=-3), ["'num_images'"]),
    (dict(workers=-1), ["'workers'", "non-negative"]),
    (dict(stacks=("conv", "conv")), ["'stacks'", "distinct"]),
    (dict(stacks=("xconv",)), ["'stacks'"]),
    (dict(stacks=()), ["'stacks'"]),
    (dict(bucket="yes"), ["'bucket'", "true or false"]),
])
def test_a_bad_value_is_one_line_naming_the_setting(changes, words):
    with pytest.raises(SettingsError) as info:
        Settings(**changes)
    text = str(info.value)
    assert "\n" not in text
    for w in words:
        assert w in text, text
    assert isinstance(info.value, ValueError)


def test_frozen_and_replace_checks_again():
    s = Settings()
    with pytest.raises(FrozenInstanceError):
        s.depth = 3
    assert s.replace(depth=3).depth == 3
    with pytest.raises(SettingsError):
        s.replace(depth=-1)


def test_from_text_types_every_kind_of_setting():
    s = Settings.from_text({"depth": "3", "bias": "false", "num_images": "none", "stacks": "conv+mconv",
                            "bucket": "yes", "model": "unet", "max_side": "64", "weights": "none"})
    assert (s.depth, s.bias, s.num_images, s.stacks, s.bucket, s.model, s.max_side, s.weights) == (
        3, False, None, ("conv", "mconv"), True, "unet", 64, None)
    # typed values (TOML) pass through
    assert Settings.from_text({"depth": 2, "bias": True}).depth == 2
    assert Settings.from_text({"depth": "5"}, Settings(model="unet")).model == "unet"


@pytest.mark.parametrize("values, words", [
    ({"colour": "red"}, ["unknown setting 'colour'", "depth"]),
    ({"depth": "two"}, ["'depth'", "integer"]),
    ({"depth": 2.5}, ["'depth'", "integer"]),
    ({"bias": "maybe"}, ["'bias'", "true or false"]),
])
def test_from_text_refuses_in_one_line(values, words):
    with pytest.raises(SettingsError) as info:
        Settings.from_text(values)
    for w in words:
        assert w in str(info.value)


def test_choices_agree_with_the_builders():
    """The names are written once (choices.py); every one of them builds."""
    import torch

    from masked_torch.analysis import models, stacks
    from masked_torch.analysis.masks import apply_holes

    assert models.MODEL_NAMES is choices.MODEL_NAMES
    for name in choices.MODEL_NAMES:
        for act in choices.ACTIVATION_NAMES:
            for init in choices.INITS:
                model = models.build_model(name, depth=1, activation=act, init=init, width=4)
                assert isinstance(model, torch.nn.Module)
    assert tuple(stacks.ACTIVATIONS) == choices.ACTIVATION_NAMES
    assert list(stacks.build_variants(models.build_model("stack", depth=1), choices.STACKS)) == list(choices.STACKS)
    mask = torch.ones(1, 1, 16, 16)
    assert apply_holes(mask, [(16, 16)], [0], seed=0).sum() < mask.sum()  # "holes" punches holes


def test_settings_and_cli_import_no_torch():
    code = ("import sys; import masked_torch.analysis.settings, masked_torch.analysis.cli; "
            "print(sorted(m for m in ('torch', 'pandas', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
