"""The README's layer example runs as written."""
import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_any_model_example_runs_and_gives_each_image_its_own_logits():
    namespace = {}
    exec(compile(next(b for b in blocks() if "class Net" in b), "README.md", "exec"), namespace)
    model, images, logits = namespace["model"], namespace["images"], namespace["logits"]
    for k, image in enumerate(images):
        torch.testing.assert_close(logits[k], model(image[None])[0], rtol=1e-4, atol=1e-5)
    assert namespace["logit_mask"].flatten().tolist() == [1.0, 1.0, 1.0]


def test_readme_layer_example_runs():
    namespace = {}
    exec(compile(next(b for b in blocks() if "MaskedSequential(" in b), "README.md", "exec"), namespace)
    assert tuple(namespace["features"].shape) == (2, 32)
    assert namespace["out_mask"].flatten().tolist() == [1.0, 1.0]


def test_readme_names_the_two_commands_and_embeds_existing_figures():
    text = README.read_text()
    assert "make test" in text and "make figures" in text
    for image in re.findall(r"\((results/[^)]+\.png)\)", text):
        assert (README.parent / image).exists(), image


def test_readme_keeps_its_sections():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    headings = [line for line in text.splitlines() if line.startswith("#")]
    for wanted in ("## Two commands", "### Installing into your own environment", "## Any CNN on a padded batch",
                   "## The layers", "## Performance", "## The activation-statistics suite",
                   "### What the figures show", "### The seed's experiment", "### Any model: a ResNet-18 and a U-Net",
                   "### Your own images, streamed", "### Masks with holes",
                   "## Several processes, several machines, many configurations", "## Licence and citation"):
        assert wanted in headings, wanted
    for name in ("make test", "make figures", "pip install", "masked-torch-activations", "--model", "--bucket"):
        assert name in text, name
