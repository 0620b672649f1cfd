"""kdengine.testing: the contract checks pass on good components and FAIL on broken ones; meta-test
running the loss-term and metric contracts on every registered classification component."""

from __future__ import annotations

import pytest
import torch
import torchmetrics
from pydantic import BaseModel, Field
from torch import nn
from torch.utils.data import TensorDataset

from kdengine import DataInfo, DatasetProvider, LossTerm, Metric, MissingSplitError, ModelFactory, Params, testing
from kdengine.plugins.catalog import get_catalog
from kdengine.testing import ContractError
from kdengine_classification.data import Digits
from kdengine_classification.losses import CrossEntropy, KLDivergence
from kdengine_classification.metrics import Top1
from kdengine_classification.models import TimmModel, TorchvisionModel

DIGITS = DataInfo(task="classification", in_channels=1, num_classes=10)
MOBILENET = {"model": "mobilenet_v2", "width_mult": 0.25, "cifar_stem": True}


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------
# check_params


def test_check_params_passes_on_a_real_component():
    testing.check_params(KLDivergence, {"temperature": 2.0}, [{"temperature": 0}, {"temperature": "hot"}])


def test_check_params_fails_when_an_invalid_value_is_accepted():
    with pytest.raises(ContractError, match="were accepted"):
        testing.check_params(KLDivergence, {"temperature": 2.0}, [{"temperature": 3.0}])


def test_check_params_fails_when_a_valid_value_is_rejected():
    with pytest.raises(ContractError, match="were rejected"):
        testing.check_params(KLDivergence, {"temperature": -2.0})


class LaxParams(LossTerm):
    """Params that accept anything: a recipe typo would pass silently."""

    class Params(BaseModel):
        temperature: float = 1.0


def test_check_params_fails_on_params_that_accept_unknown_keys():
    with pytest.raises(ContractError, match="unknown keys"):
        testing.check_params(LaxParams, {"temperature": 2.0})


# ---------------------------------------------------------------------------------------------
# check_loss_term


class VectorLoss(LossTerm):
    def forward(self, ctx):
        return (ctx.student - 1).pow(2).mean(dim=1)


class DetachedLoss(LossTerm):
    def forward(self, ctx):
        return (ctx.student.detach() - 1).pow(2).mean()


class NaNLoss(LossTerm):
    def forward(self, ctx):
        return ctx.student.sum() * float("nan")


class UnusedAdapterLoss(LossTerm):
    """Creates an adapter in setup but never uses it: the adapter would never train."""

    needs_teacher = True

    def setup(self, ctx):
        self.adapter = nn.Linear(ctx.student.shape[1], ctx.teacher.shape[1])

    def forward(self, ctx):
        return (ctx.student - ctx.teacher).pow(2).mean()


class HiddenTeacherLoss(LossTerm):
    """Declares it does not need the teacher, yet reads it."""

    def forward(self, ctx):
        return (ctx.student - ctx.teacher).pow(2).mean()


class UsedAdapterLoss(UnusedAdapterLoss):
    def forward(self, ctx):
        return (self.adapter(ctx.student) - ctx.teacher).pow(2).mean()


def test_check_loss_term_passes_on_real_terms():
    value = testing.check_loss_term(KLDivergence, {"temperature": 2.0}, testing.logits_context)
    assert value.dim() == 0 and value > 0
    testing.check_loss_term(CrossEntropy, {}, testing.logits_context)
    testing.check_loss_term(UsedAdapterLoss, {}, testing.logits_context)


@pytest.mark.parametrize("cls, message", [
    (VectorLoss, "not a scalar"),
    (DetachedLoss, "no gradient"),
    (NaNLoss, "non-finite"),
    (UnusedAdapterLoss, "parameter 'adapter.weight'"),
    (HiddenTeacherLoss, "needs_teacher = False"),
])
def test_check_loss_term_fails_on_broken_terms(cls, message):
    with pytest.raises(ContractError, match=message):
        testing.check_loss_term(cls, {}, testing.logits_context)


def test_check_loss_term_fails_when_the_context_lacks_a_tapped_feature():
    from kdengine_classification.kd_methods import FitNets

    with pytest.raises(ContractError, match="taps"):
        testing.check_loss_term(FitNets, {"student_layer": "a", "teacher_layer": "b"}, testing.logits_context)


# ---------------------------------------------------------------------------------------------
# check_dataset


class TinyData(DatasetProvider):
    class Params(Params):
        channels: int = Field(1, ge=1)
        label_offset: int = 0
        empty_test: bool = False

    def info(self):
        return DataInfo(task="classification", in_channels=1, num_classes=3)

    def _split(self, n):
        generator = torch.Generator().manual_seed(0)
        images = torch.randn(n, self.params.channels, 4, 4, generator=generator)
        labels = torch.arange(n) % 3 + self.params.label_offset
        return TensorDataset(images, labels)

    def train_set(self):
        return self._split(6)

    def val_set(self):
        return self._split(3)

    def test_set(self):
        return self._split(0 if self.params.empty_test else 4)


class NoValData(TinyData):
    val_set = DatasetProvider.val_set


def test_check_dataset_passes_on_a_good_provider_and_on_digits():
    assert testing.check_dataset(TinyData, {}).num_classes == 3
    info = testing.check_dataset(Digits, {"image_size": 8, "train_size": 100})
    assert info.in_channels == 1 and info.num_classes == 10


@pytest.mark.parametrize("params, message", [
    ({"channels": 3}, "channels"),
    ({"label_offset": 1}, "class index"),
    ({"empty_test": True}, "test_set.*empty"),
])
def test_check_dataset_fails_on_broken_providers(params, message):
    with pytest.raises(ContractError, match=message):
        testing.check_dataset(TinyData, params)


def test_check_dataset_needs_a_val_split():
    with pytest.raises(MissingSplitError, match="NoValData has no validation split"):
        testing.check_dataset(NoValData, {})


def test_check_dataset_accepts_items_of_different_sizes_collated_as_lists():
    class Sizes(TinyData):
        def info(self):
            return DataInfo(task="superres", in_channels=1)

        def test_set(self):
            return [(torch.zeros(1, 4, 4), torch.zeros(1, 8, 8)), (torch.zeros(1, 4, 6), torch.zeros(1, 8, 12))]

        def collate_fn(self):
            return lambda batch: tuple(map(list, zip(*batch)))

    assert testing.check_dataset(Sizes, {}).task == "superres"


# ---------------------------------------------------------------------------------------------
# check_metric


def _batches(sizes=(5, 3), classes=10, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, classes, generator=generator), torch.randint(0, classes, (n,), generator=generator))
            for n in sizes]


class MeanOfBatchAccuracy(torchmetrics.Metric):
    """Averages per-batch accuracies: wrong when batches differ in size."""

    def __init__(self):
        super().__init__()
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("batches", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, preds, target):
        self.total += (preds.argmax(1) == target).float().mean()
        self.batches += 1

    def compute(self):
        return self.total / self.batches


class NeverForgets(torchmetrics.Metric):
    """Keeps its counts in plain attributes, which reset() does not clear."""

    def __init__(self):
        super().__init__()
        self.correct, self.seen = 0.0, 0.0

    def update(self, preds, target):
        self.correct += float((preds.argmax(1) == target).sum())
        self.seen += len(target)

    def compute(self):
        return torch.tensor(self.correct / self.seen)


class BatchMeanMetric(Metric):
    def build(self, info):
        return MeanOfBatchAccuracy()


class NoResetMetric(Metric):
    def build(self, info):
        return NeverForgets()


def test_check_metric_passes_on_top1():
    values = testing.check_metric(Top1, {}, DIGITS, _batches())
    assert 0 <= values["value"] <= 1


def test_check_metric_fails_on_per_batch_averaging():
    batches = _batches()
    # make the two batches' accuracies differ so the averaging mistake shows
    batches[1][0][:] = torch.nn.functional.one_hot(batches[1][1], 10).float()
    with pytest.raises(ContractError, match="accumulating"):
        testing.check_metric(BatchMeanMetric, {}, DIGITS, batches)


def test_check_metric_fails_when_reset_forgets_nothing():
    batches = _batches()
    batches[1][0][:] = torch.nn.functional.one_hot(batches[1][1], 10).float()
    with pytest.raises(ContractError, match="reset"):
        testing.check_metric(NoResetMetric, {}, DIGITS, batches)


# ---------------------------------------------------------------------------------------------
# check_model_factory


class WrongHead(ModelFactory):
    def build(self, info):
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(info.num_classes + 1))


class ForgetfulLoad(ModelFactory):
    """load() ignores the file and returns fresh weights."""

    def build(self, info):
        return nn.Sequential(nn.Flatten(), nn.Linear(64, info.num_classes))

    def load(self, path, info):
        return self.build(info)


class FrozenModel(ModelFactory):
    def build(self, info):
        return nn.Sequential(nn.Flatten(), nn.Linear(64, info.num_classes)).requires_grad_(False)


def test_check_model_factory_passes_on_timm_and_torchvision():
    testing.check_model_factory(TorchvisionModel, MOBILENET, DIGITS, (2, 1, 8, 8))
    testing.check_model_factory(TimmModel, {"model": "test_resnet"}, DIGITS, (2, 1, 8, 8))


@pytest.mark.parametrize("cls, message", [
    (WrongHead, "logits"),
    (ForgetfulLoad, "reloaded"),
    (FrozenModel, "gradient"),
])
def test_check_model_factory_fails_on_broken_factories(cls, message):
    with pytest.raises(ContractError, match=message):
        testing.check_model_factory(cls, {}, DIGITS, (2, 1, 8, 8))


# ---------------------------------------------------------------------------------------------
# meta-test: every registered classification loss term and metric keeps its contract

#: Params for each classification loss term in the meta-test, for a torchvision MobileNetV2 x0.25
#: student and a x0.5 teacher. A new term must be added here (the test below insists).
LOSS_PARAMS = {
    "kl_div": {"temperature": 4.0},
    "cross_entropy": {"label_smoothing": 0.1},
    "fitnets": {"student_layer": "features.4", "teacher_layer": "features.4"},
    "attention_transfer": {"pairs": [["features.2", "features.2"]]},
    "dist": {},
    "crd": {"student_layer": "classifier.0", "teacher_layer": "classifier.0", "feature_dim": 8},
    "dkd": {"temperature": 4.0, "standardize": True},
    "mlkd": {"temperatures": [2.0, 4.0]},
    "ctkd": {"ramp_steps": 10},
    "nkd": {},
    "vid": {"pairs": [["features.2", "features.2"]], "mid_channels": 8},
    "ofd": {"pairs": [["features.4", "features.4"]]},
    "ft": {"student_layer": "features.4", "teacher_layer": "features.4"},
    "reviewkd": {"student_layers": ["features.2", "features.4"], "teacher_layers": ["features.2", "features.4"],
                 "mid_channels": 8, "levels": [2, 1]},
    "rkd": {},
    "pkt": {"student_layer": "classifier.0", "teacher_layer": "classifier.0"},
    "sp": {"pairs": [["features.4", "features.4"]]},
    "nst": {"student_layer": "features.2", "teacher_layer": "features.2"},
}


def _classification(kind):
    return sorted(n for n, e in get_catalog(refresh=True).entries[kind].items() if e.plugin == "classification")


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    student = TorchvisionModel(MOBILENET).build(DIGITS).train()
    teacher = TorchvisionModel({**MOBILENET, "width_mult": 0.5}).build(DIGITS).eval()
    return student, teacher


def test_meta_every_classification_loss_term_has_contract_params():
    assert _classification("loss") == sorted(LOSS_PARAMS)


@pytest.mark.parametrize("name", sorted(LOSS_PARAMS))
def test_meta_loss_term_contract(name, pair):
    student, teacher = pair
    cls = get_catalog().get("loss", name)
    testing.check_params(cls, LOSS_PARAMS[name], [])
    inputs = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([1, 2, 3, 4])
    testing.check_loss_term(cls, LOSS_PARAMS[name],
                            lambda term: testing.context_from_models(term, student, teacher, inputs, targets))


@pytest.mark.parametrize("name", _classification("metric"))
def test_meta_metric_contract(name):
    cls = get_catalog().get("metric", name)
    testing.check_params(cls, {}, [])
    testing.check_metric(cls, {}, DIGITS, _batches(sizes=(7, 3, 5)))
