"""Plugin manager and catalog: built-ins, a real third-party entry point, broken plugins, clashes."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest

from kdengine import PluginError, hookimpl
from kdengine.plugins.catalog import build_catalog, get_catalog
from kdengine.cli import main
from kdengine.plugins.hookspecs import KINDS
from kdengine.plugins.manager import PluginWarning


def test_builtins_register_every_kind():
    catalog = get_catalog(refresh=True)
    assert {"classification", "edges", "superres"} <= set(catalog.plugins)
    assert "timm" in catalog.names("teacher") and "torchvision" in catalog.names("student")
    assert {"kl_div", "cross_entropy"} <= set(catalog.names("loss"))
    assert "digits" in catalog.names("dataset")
    assert {"top1", "top5"} <= set(catalog.names("metric"))


def test_every_hookspec_is_called_and_feeds_the_catalog():
    catalog = get_catalog(refresh=True)
    for kind in KINDS:
        assert catalog.names(kind), f"no plugin registered any {kind}"


def test_third_party_plugin_is_listed_and_namespaced(third_party, capsys):
    catalog = get_catalog()
    assert catalog.plugins["toy"].distribution == "kdengine-toy"
    assert catalog.plugins["toy"].version == "0.3.1"
    assert "toy.mlp" in catalog.names("student") and "toy.logit_mse" in catalog.names("loss")
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "toy (kdengine-toy 0.3.1" in out
    assert "toy.mlp" in out and "toy.logit_mse" in out


def test_details_give_each_loss_term_its_method_and_paper(capsys):
    assert main(["plugins", "--details"]) == 0
    lines = capsys.readouterr().out.splitlines()
    dkd = next(line for line in lines if line.strip().startswith("dkd "))
    assert "Zhao et al., CVPR 2022" in dkd
    torchvision = next(line for line in lines if line.strip().startswith("torchvision "))
    assert "where the architecture has one" in torchvision  # a first sentence wrapped over lines is joined


def test_third_party_component_usable_from_a_recipe(third_party, tiny_recipe, tmp_path):
    import kdengine

    tiny_recipe["teacher"] = {"name": "toy.mlp", "params": {"hidden": 16}}
    tiny_recipe["student"] = {"name": "toy.mlp", "params": {"hidden": 8}}
    tiny_recipe["loss"].append({"name": "toy.logit_mse", "weight": 0.1})
    results = kdengine.run(tiny_recipe, output_dir=tmp_path, progress=False)
    distilled = results.stage("distilled")
    assert distilled.model == "toy.mlp(hidden=8)"
    assert "toy.logit_mse" in distilled.history[0].losses


def test_broken_plugin_is_skipped_with_a_warning(third_party, monkeypatch):
    monkeypatch.setenv("KDENGINE_DISABLE_PLUGINS", "")
    with pytest.warns(PluginWarning) as record:
        catalog = build_catalog()
    messages = [str(w.message) for w in record]
    assert any("plugin 'broken' skipped" in m and "a_module_that_does_not_exist" in m for m in messages)
    assert any("plugin 'badhook' skipped" in m and "unknown hook" in m for m in messages)
    assert "toy" in catalog.plugins and "broken" not in catalog.plugins and "badhook" not in catalog.plugins


def test_strict_mode_turns_a_broken_plugin_into_an_error(third_party, monkeypatch):
    monkeypatch.setenv("KDENGINE_DISABLE_PLUGINS", "badhook")
    monkeypatch.setenv("KDENGINE_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="plugin 'broken' skipped.*KDENGINE_STRICT_PLUGINS"):
        build_catalog()


def test_disable_blocks_by_name(third_party, monkeypatch):
    monkeypatch.setenv("KDENGINE_DISABLE_PLUGINS", "toy,broken,badhook")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        catalog = build_catalog()
    assert "toy" not in catalog.plugins
    assert "toy.mlp" not in catalog.names("student")


def test_name_clash_between_plugins_names_both(monkeypatch):
    from kdengine.plugins import manager as plugin_module

    class Clash:
        @hookimpl
        def register_loss_terms(register):
            from kdengine_classification.losses import CrossEntropy

            register("kl_div", CrossEntropy)

    import types

    module = types.ModuleType("kdengine_clash")
    module.register_loss_terms = Clash.register_loss_terms
    monkeypatch.setitem(sys.modules, "kdengine_clash", module)
    monkeypatch.setitem(plugin_module.BUILTIN_PLUGINS, "clash", "kdengine_clash")
    with pytest.raises(PluginError, match="'kl_div' is registered by both plugin 'classification' and plugin 'clash'"):
        build_catalog()


def test_registering_a_wrong_class_is_an_error(monkeypatch):
    import types

    from kdengine.plugins import manager as plugin_module

    module = types.ModuleType("kdengine_wrong")

    @hookimpl
    def register_metrics(register):
        register("accuracy", dict)

    module.register_metrics = register_metrics
    monkeypatch.setitem(sys.modules, "kdengine_wrong", module)
    monkeypatch.setitem(plugin_module.BUILTIN_PLUGINS, "wrong", "kdengine_wrong")
    with pytest.raises(PluginError, match="not a subclass of kdengine.Metric"):
        build_catalog()


def test_plugins_command_in_a_fresh_process_warns_about_broken_plugin(plugin_site):
    env = {"PYTHONPATH": str(plugin_site), "HF_HUB_OFFLINE": "1", "PATH": ""}
    proc = subprocess.run([sys.executable, "-m", "kdengine", "plugins"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0
    assert "plugin 'broken' skipped" in proc.stderr
    assert "toy (kdengine-toy 0.3.1" in proc.stdout
