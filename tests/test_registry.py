"""One registry mechanism (derd.registry) for methods, models and datasets: a name taken twice is refused,
an unknown one is one line listing the choices, and a plugin in $DERD_PLUGINS registers any of the three."""

from __future__ import annotations

import pytest

from derd.data import DatasetSpec, available_datasets, dataset_spec, register_dataset, unregister_dataset
from derd.errors import UserError
from derd.methods import available_methods, get_method, register_method
from derd.models import available_models, create_model, register, unregister_model
from derd.registry import PLUGINS_ENV, Registry

PLUGIN = """
import dataclasses

from torch import nn

from derd.data import dataset_spec, register_dataset
from derd.models import register


@register("plugin_linear")
def plugin_linear(num_classes, in_channels):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))


digits = dataset_spec("digits")
register_dataset(dataclasses.replace(digits, info=dataclasses.replace(digits.info, name="plugin_digits")))
"""


def test_a_name_taken_twice_is_refused_for_every_kind():
    with pytest.raises(ValueError, match="architecture 'resnet18' is registered already"):
        register("resnet18")(lambda num_classes, in_channels: None)
    digits = dataset_spec("digits")
    with pytest.raises(ValueError, match="dataset 'digits' is registered already"):
        register_dataset(digits)
    with pytest.raises(ValueError, match="method 'derd' is registered already"):
        register_method(get_method("derd"))
    assert available_methods().count("derd") == 1 and available_datasets().count("digits") == 1


def test_an_unknown_name_is_one_line_with_the_choices():
    with pytest.raises(UserError, match=r"^unknown architecture 'nope'; choose one of .*resnet18"):
        create_model("nope", 10)
    with pytest.raises(UserError, match=r"^unknown dataset 'nope'; choose one of digits, cifar10"):
        dataset_spec("nope")
    with pytest.raises(UserError, match=r"^unknown method 'nope'; choose one of derd, "):
        get_method("nope")


def test_a_registry_lists_in_its_order_and_discovers_once():
    calls = []
    reg: Registry[int] = Registry("thing", discover=lambda: calls.append(1), order=lambda name, value: -value)
    reg.add("a", 1)
    reg.decorator("b")(2)
    assert reg.names() == ["b", "a"] and reg.get("a") == 1 and "b" in reg and calls == [1]
    reg.remove("b")
    assert reg.names() == ["a"] and calls == [1]
    with pytest.raises(ValueError, match="a thing needs a name"):
        reg.add("", 3)


def test_a_plugin_registers_a_model_and_a_dataset(tmp_path, monkeypatch):
    path = tmp_path / "my_plugin.py"
    path.write_text(PLUGIN)
    monkeypatch.setenv(PLUGINS_ENV, str(path))
    try:
        assert "plugin_linear" in available_models() and "plugin_digits" in available_datasets()
        assert create_model("plugin_linear", 10, in_channels=1).net is not None
        assert isinstance(dataset_spec("plugin_digits"), DatasetSpec)
    finally:
        unregister_model("plugin_linear")
        unregister_dataset("plugin_digits")
