"""The README's layer example runs as written."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_layer_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    namespace = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    assert tuple(namespace["features"].shape) == (2, 32)
    assert namespace["out_mask"].flatten().tolist() == [1.0, 1.0]


def test_readme_names_the_two_commands_and_embeds_existing_figures():
    text = README.read_text()
    assert "make test" in text and "make figures" in text
    for image in re.findall(r"\((results/[^)]+\.png)\)", text):
        assert (README.parent / image).exists(), image
