"""kdengine-dkd: Decoupled Knowledge Distillation as a kdengine plugin.

Registered through the ``kdengine`` entry-point group under the plugin name ``dkd``, so recipes
name the loss term ``dkd.dkd``.
"""

from kdengine import hookimpl

from kdengine_dkd.loss import DecoupledKD, dkd_loss

__all__ = ["DecoupledKD", "dkd_loss"]


@hookimpl
def register_loss_terms(register):
    register("dkd", DecoupledKD)
