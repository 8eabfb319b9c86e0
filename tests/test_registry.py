import pytest

from kdl.registry import Registry, UnknownNameError


def test_register_build_with_presets_and_overrides():
    reg = Registry("widget")

    @reg.register("box", presets={"tiny": {"size": 1, "color": "red"}})
    def box(size=10, color="blue"):
        """A box."""
        return (size, color)

    assert reg.build("box") == (10, "blue")
    assert reg.build("box", preset="tiny") == (1, "red")
    assert reg.build("box", preset="tiny", color="green") == (1, "green")
    assert reg.names() == ["box"] and "box" in reg and len(reg) == 1
    assert reg.get("box").doc == "A box."


def test_unknown_name_lists_close_matches_and_all_names():
    reg = Registry("widget")
    for n in ("resnet", "resnext", "vit"):
        reg.register(n)(lambda: None)
    with pytest.raises(UnknownNameError) as err:
        reg.get("resnet18")
    msg = str(err.value)
    assert "unknown widget 'resnet18'" in msg
    assert "Did you mean 'resnet'" in msg
    assert "Available: resnet, resnext, vit." in msg


def test_unknown_preset_and_double_registration():
    reg = Registry("widget")
    reg.register("a", presets={"tiny": {}})(lambda: 1)
    with pytest.raises(UnknownNameError, match="unknown preset of widget 'a' 'tinny'"):
        reg.build("a", preset="tinny")
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a")(lambda: 2)


@pytest.mark.once
def test_typed_specs_refuse_a_misspelt_field_and_type_every_entry():
    import kdl  # noqa: F401  (registers every model and dataset)
    from kdl.registry import DATASETS, MODELS, DatasetSpec, ModelSpec

    reg = Registry("model", ModelSpec)
    reg.register("a", tasks=("classification",), data_arg="input_shape")(lambda: 1)
    assert reg.get("a").spec.custom_training and reg.get("a").spec.tasks == ("classification",)
    assert reg.get("a").meta == {"tasks": ("classification",), "data_arg": "input_shape"}
    with pytest.raises(TypeError, match=r"model 'b': unknown field\(s\) 'task' \(fields of "
                                        r"ModelSpec: presets, tasks"):
        reg.register("b", task="classification")(lambda: 2)
    assert "b" not in reg
    assert all(isinstance(e.spec, ModelSpec) and e.spec.presets == e.presets for e in MODELS)
    assert all(isinstance(e.spec, DatasetSpec) for e in DATASETS)
    assert MODELS.get("gan").spec.custom_training and not MODELS.get("cnn").spec.custom_training
