"""Out-of-distribution detection: the max-softmax AUROC, the second set's images, and its place in evaluate()."""

import itertools

import pytest
import torch
from torch import nn
from PIL import Image

from openmix.data import build_datamodule
from openmix.evaluation import EvalSettings, evaluate, evaluate_run
from openmix.evaluation.ood import auroc, max_softmax, ood_images
from openmix.results import read_eval, write_eval


# ------------------------------------------------------------------ auroc
def test_auroc_hand_computed_with_a_tie():
    # pairs (positive, negative): (.9, .5) > , (.9, .1) > , (.5, .5) tie = 1/2, (.5, .1) >  ->  3.5 / 4
    assert auroc(torch.tensor([0.9, 0.5]), torch.tensor([0.5, 0.1])) == pytest.approx(87.5)


@pytest.mark.parametrize("positive, negative, expected", [([3.0, 4.0], [1.0, 2.0], 100.0), ([1.0, 2.0], [3.0, 4.0], 0.0),
                                                          ([1.0, 1.0], [1.0, 1.0, 1.0], 50.0)])
def test_auroc_of_separated_reversed_and_tied_scores(positive, negative, expected):
    assert auroc(torch.tensor(positive), torch.tensor(negative)) == pytest.approx(expected)


def test_auroc_counts_every_pair():
    generator = torch.Generator().manual_seed(0)
    positive, negative = torch.randint(0, 6, (40,), generator=generator), torch.randint(0, 5, (30,), generator=generator)
    pairs = [1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(positive.tolist(), negative.tolist())]
    assert auroc(positive.float(), negative.float()) == pytest.approx(100 * sum(pairs) / len(pairs))


def test_auroc_needs_both_kinds():
    with pytest.raises(ValueError, match="both kinds"):
        auroc(torch.tensor([0.5]), torch.tensor([]))


def test_max_softmax_is_the_top_probability():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float16)
    assert max_softmax(logits).tolist() == pytest.approx([torch.tensor([2.0, 0, 0]).softmax(0).max().item(), 1 / 3])


# ------------------------------------------------------------------ the second set
def test_digits_are_scikit_learns_1797_digits_as_pixels():
    load_digits = pytest.importorskip("sklearn.datasets").load_digits

    native = ood_images("digits", size=(8, 8), in_chans=1)
    assert native.dtype == torch.float32 and torch.equal(native[:, 0], torch.from_numpy(load_digits().images).float() / 16)
    assert native.mean() < 0.5  # white strokes on a black background, as in (Fashion-)MNIST


def test_digits_take_the_datas_size_and_channels():
    pytest.importorskip("sklearn")
    images = ood_images("digits", size=(28, 28), in_chans=3)
    assert images.shape == (1797, 3, 28, 28) and 0.0 <= images.min() and images.max() <= 1.0
    assert torch.equal(images[:, 0], images[:, 2])  # one channel, repeated


def test_a_folder_gives_its_images_sorted_in_the_datas_channels_and_size(tmp_path):
    (tmp_path / "b").mkdir()
    Image.new("RGB", (10, 10), (200, 200, 200)).save(tmp_path / "b" / "x.png")
    Image.new("L", (12, 20), 50).save(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("not an image")
    gray = ood_images(str(tmp_path), size=(8, 8), in_chans=1)
    assert gray.shape == (2, 1, 8, 8)
    assert gray[0].flatten().tolist() == pytest.approx([50 / 255] * 64, abs=1e-6)  # a.png first
    assert gray[1].flatten().tolist() == pytest.approx([200 / 255] * 64, abs=2e-3)
    assert ood_images(str(tmp_path), size=(8, 8), in_chans=3).shape == (2, 3, 8, 8)


def test_a_folder_without_images_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no images"):
        ood_images(str(tmp_path), size=(8, 8), in_chans=1)


def test_ood_settings_are_checked_up_front(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="neither"):
        EvalSettings(ood=str(tmp_path / "nowhere"))
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(ValueError, match="pip install scikit-learn"):
        EvalSettings(ood="digits")


# ------------------------------------------------------------------ in evaluate()
class Confidence(nn.Module):
    """Logits whose top probability grows with the mean pixel: bright images are 'confident'."""

    def forward(self, x):
        logits = torch.zeros(x.shape[0], 10)
        logits[:, 0] = x.mean((1, 2, 3)) * 20.0
        return logits


def test_evaluate_measures_the_auroc_against_the_second_set(tmp_path):
    data = build_datamodule("synthetic", num_samples=16, num_val_samples=16, image_size=8, in_chans=1, batch_size=8)
    data.setup("validate")
    for i, value in enumerate((0, 255)):  # a black and a white image outside the data
        Image.new("L", (8, 8), value).save(tmp_path / f"{i}.png")
    settings = EvalSettings(corruption=False, adversarial=False, occlusion=False, ood=str(tmp_path))
    metrics = evaluate(Confidence(), data, settings, device="cpu")
    assert metrics["ood"] == {"source": str(tmp_path), "num_images": 2}
    x = torch.cat([xb for xb, _ in data.evaluation_dataloader("cpu")])
    outside = torch.stack([torch.zeros(1, 8, 8), torch.ones(1, 8, 8)])
    from openmix.pixels import normalize

    scores = lambda inputs: max_softmax(Confidence()(inputs))  # noqa: E731
    expected = auroc(scores(x), scores(normalize(outside, data.mean, data.std)))
    assert metrics["ood_auroc"] == pytest.approx(expected)
    assert "ood_auroc" not in evaluate(Confidence(), data, EvalSettings(corruption=False, adversarial=False,
                                                                         occlusion=False), device="cpu")


def test_an_evaluation_from_before_ood_existed_counts_as_without_it(tmp_path, monkeypatch):
    old = {**EvalSettings().to_dict()}
    del old["ood"]
    write_eval(tmp_path, {"settings": old, "top1": 50.0})
    assert evaluate_run(tmp_path, EvalSettings()) == (read_eval(tmp_path), False)
