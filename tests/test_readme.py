"""The README's code runs as written: every Python block of the quick start (in order, in one namespace, as a
reader pastes them), the training recipe, the layer example; its links point at files that exist."""
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TEXT = README.read_text(encoding="utf-8")


def section(heading: str) -> str:
    """The text under ``heading`` (a ``## `` line) up to the next heading of the same level."""
    start = TEXT.index(f"\n{heading}\n")
    end = TEXT.find("\n## ", start + len(heading) + 2)
    return TEXT[start:end if end != -1 else len(TEXT)]


def blocks(text: str = TEXT) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def needs_torchvision(block: str) -> bool:
    return bool(re.search(r"^import torchvision|^from torchvision", block, flags=re.M))


QUICK_START = blocks(section("## Quick start"))


def run(block: str, namespace: dict) -> dict:
    exec(compile(block, "README.md", "exec"), namespace)
    return namespace


def test_the_quick_start_has_the_blocks_a_newcomer_needs():
    joined = "\n".join(QUICK_START)
    for name in ("mnn.convert(", "pad_batch(", "assert_close(", "torchvision.models.resnet18(", "inplace=True",
                 "PadCollate(", "unpad(", "load_state_dict(masked.state_dict())"):
        assert name in joined, name
    install = section("## Quick start")
    assert "--index-url https://download.pytorch.org/whl/cpu" in install
    assert "pip install '.[analysis]'" in install


@pytest.fixture(scope="module")
def quick_start() -> dict[str, dict]:
    """Every quick-start block but torchvision's, run in order in one namespace; what the namespace holds after
    the block that defines ``key`` (later blocks rebind names such as ``model``)."""
    namespace: dict = {}
    after = {}
    for block in QUICK_START:
        if not needs_torchvision(block):
            run(block, namespace)
            for key in ("class Net", "inplace=True", "PadCollate("):
                if key in block:
                    after[key] = dict(namespace)
    assert set(after) == {"class Net", "inplace=True", "PadCollate("}
    return after


def test_the_converted_model_gives_each_image_what_the_plain_model_gives_it_alone(quick_start):
    quick_start = quick_start["class Net"]
    model, images, logits = quick_start["model"], quick_start["images"], quick_start["logits"]
    assert logits.shape == (3, 10)
    with torch.no_grad():
        for k, image in enumerate(images):
            torch.testing.assert_close(logits[k], model(image[None])[0], rtol=1e-4, atol=1e-5)
    assert quick_start["logit_mask"].flatten().tolist() == [1.0, 1.0, 1.0]


def test_the_copy_and_the_shared_conversion_say_what_they_do(quick_start):
    quick_start = quick_start["inplace=True"]
    model, masked, shared = quick_start["model"], quick_start["masked"], quick_start["shared"]
    plain = dict(model.named_parameters())
    assert all(p is plain[n] for n, p in shared.named_parameters())
    assert not any(p is plain[n] for n, p in masked.named_parameters())


def test_the_training_recipe_trains_and_the_weights_go_back_into_the_plain_model(quick_start):
    quick_start = quick_start["PadCollate("]
    sizes, dataset, per_image = quick_start["sizes"], quick_start["dataset"], quick_start["per_image"]
    trained, plain = quick_start["masked"], quick_start["model"]   # the recipe's names, rebound by it
    assert [tuple(out.shape) for out in per_image] == [(4, h, w) for h, w in sizes[:4]]
    assert isinstance(plain, torch.nn.Sequential)
    for key, value in trained.state_dict().items():
        assert torch.equal(plain.state_dict()[key], value), key
    # it trained: the loss over the dataset is below the untrained model's (the recipe's lines up to the
    # conversion, run again: the same seed, data and initial weights)
    [recipe] = [b for b in QUICK_START if "PadCollate(" in b]
    untrained = run(recipe.split("masked = mnn.convert")[0], {})["model"].eval()

    def loss(net):
        with torch.no_grad():
            return sum(torch.nn.functional.cross_entropy(net(image[None]), target[None]) for image, target in dataset)

    assert loss(plain) < loss(untrained)


def test_the_torchvision_block_runs():
    pytest.importorskip("torchvision")
    [block] = [b for b in QUICK_START if needs_torchvision(b)]
    namespace = run(block, {})
    assert namespace["logits"].shape == (3, 1000)


def test_readme_layer_example_runs():
    namespace = run(next(b for b in blocks() if "MaskedSequential(" in b), {})
    assert tuple(namespace["features"].shape) == (2, 32)
    assert namespace["out_mask"].flatten().tolist() == [1.0, 1.0]


def test_readme_names_the_two_commands_and_its_links_exist():
    assert "make test" in TEXT and "make figures" in TEXT
    for image in re.findall(r"\((results/[^)]+\.png)\)", TEXT):
        assert (ROOT / image).exists(), image
    for page in ("docs/measurements.md", "docs/data_dictionary.md"):
        assert f"]({page}" in TEXT, page
    for target in re.findall(r"\]\(((?:docs|results|notebooks)/[^)#]+)", TEXT):
        assert (ROOT / target).exists(), target
    anchors = set(re.findall(r'<a id="([^"]+)">', TEXT)) | {
        re.sub(r"[^\w\- ]", "", h.lstrip("#").strip().lower()).replace(" ", "-")
        for h in TEXT.splitlines() if h.startswith("#")}
    for anchor in re.findall(r"\]\(#([^)]+)\)", TEXT):
        assert anchor in anchors, anchor


def test_readme_keeps_its_sections():
    headings = [line for line in TEXT.splitlines() if line.startswith("#")]
    for wanted in ("## Quick start", "### Install", "### Convert a model and check it image by image",
                   "### torchvision's ResNet-18", "### `convert` returns a copy", "### Training on padded batches",
                   "## Two commands", "## Any CNN on a padded batch",
                   "## The layers", "## Performance", "## The activation-statistics suite",
                   "### What the figures show", "### The seed's experiment", "### Any model: a ResNet-18 and a U-Net",
                   "### Your own images, streamed", "### Masks with holes",
                   "## Several processes, several machines, many configurations", "## Licence and citation"):
        assert wanted in headings, wanted
    assert headings.index("## Quick start") < headings.index("## Two commands"), "the README opens with the quick start"
    for name in ("make test", "make figures", "pip install", "masked-torch-activations", "--model", "--bucket"):
        assert name in TEXT, name


@pytest.mark.parametrize("page", sorted(p.name for p in (ROOT / "docs").glob("*.md")))
def test_the_docs_pages_links_exist(page):
    text = (ROOT / "docs" / page).read_text(encoding="utf-8")
    for target in re.findall(r"\]\((?!https?:|#)([^)#]+)", text):
        assert (ROOT / "docs" / target).resolve().exists(), f"{page}: {target}"


def test_the_measurement_logs_live_under_docs():
    logs = (ROOT / "docs" / "measurements.md").read_text(encoding="utf-8")
    for moved in ("Against the targets of the layer issue", "Earlier figures"):
        assert moved in logs and moved not in TEXT, moved


def test_the_data_dictionary_documents_every_column_of_every_committed_file():
    """Each column of each parquet file under results/ has a row (its name in the first cell) in the data
    dictionary's table for that file or in the shared columns, so that the page cannot fall behind what the
    suite writes."""
    pq = pytest.importorskip("pyarrow.parquet")
    page = (ROOT / "docs" / "data_dictionary.md").read_text(encoding="utf-8")
    sections = dict(re.findall(r"\n## (\S+\.parquet)\n(.*?)(?=\n## |\Z)", page, flags=re.S))
    shared = page[page.index("## Columns every file shares"):page.index("\n## activation_stats.parquet")]
    files = sorted((ROOT / "results").rglob("*.parquet"))
    assert files
    for path in files:
        assert path.name in sections, f"{path.name} has no section in docs/data_dictionary.md"
        first_cells = re.findall(r"^\| ([^|]*) \|", sections[path.name] + shared, flags=re.M)
        documented = {name for cell in first_cells for name in re.findall(r"`([a-z_]+)`", cell)}
        missing = [c for c in pq.read_schema(path).names if c not in documented]
        assert not missing, f"{path.relative_to(ROOT)}: columns {missing} are not in docs/data_dictionary.md"
