"""Built-in kdengine plugin: image classification.

Models from timm and torchvision (with a CIFAR stem option and MobileNetV2 width multipliers) and
the CIFAR ResNets of the distillation benchmarks (ResNet-8x4, ResNet-32x4),
datasets (scikit-learn digits, CIFAR-100, image folders), Hinton's KD loss and cross-entropy,
top-1/top-5 accuracy.
"""

from kdengine import hookimpl

from kdengine_classification.cifar_resnet import CifarResNetModel
from kdengine_classification.data import Cifar100, Digits, ImageFolder
from kdengine_classification.losses import CrossEntropy, KLDivergence
from kdengine_classification.metrics import Top1, Top5
from kdengine_classification.models import TimmModel, TorchvisionModel


@hookimpl
def register_teachers(register):
    register("timm", TimmModel)
    register("torchvision", TorchvisionModel)
    register("cifar_resnet", CifarResNetModel)


@hookimpl
def register_students(register):
    register("timm", TimmModel)
    register("torchvision", TorchvisionModel)
    register("cifar_resnet", CifarResNetModel)


@hookimpl
def register_loss_terms(register):
    from kdengine_classification.kd_methods import DIST, AttentionTransfer, ContrastiveRepresentation, FitNets
    from kdengine_classification.kd_methods.feature_methods import FEATURE_METHODS
    from kdengine_classification.kd_methods.logit_methods import LOGIT_METHODS
    from kdengine_classification.kd_methods.relation_methods import RELATION_METHODS

    register("kl_div", KLDivergence)
    register("cross_entropy", CrossEntropy)
    register("fitnets", FitNets)
    register("attention_transfer", AttentionTransfer)
    register("dist", DIST)
    register("crd", ContrastiveRepresentation)
    for name, term in {**LOGIT_METHODS, **FEATURE_METHODS, **RELATION_METHODS}.items():
        register(name, term)


@hookimpl
def register_datasets(register):
    register("digits", Digits)
    register("cifar100", Cifar100)
    register("image_folder", ImageFolder)


@hookimpl
def register_metrics(register):
    register("top1", Top1)
    register("top5", Top5)
