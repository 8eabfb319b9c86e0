"""Reference layouts of the CNN family: parameter counts and input handling."""

import numpy as np
import pytest

from kdl.models import build_model


def trainable_params(model):
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def test_lenet5_has_61706_params_on_32x32():
    model = build_model("lenet5", (32, 32, 1), 10)
    assert model.count_params() == 61_706


def test_lenet5_pads_small_images_to_32_and_keeps_the_count():
    model = build_model("lenet5", (8, 8, 1), 10)
    assert model.count_params() == 61_706
    assert model.get_layer("pad_to_32").output.shape[1:3] == (32, 32)
    # the 8x8 image sits in the centre of the 32x32 canvas
    x = np.ones((1, 8, 8, 1), "float32")
    import keras

    padded = keras.Model(model.input, model.get_layer("pad_to_32").output)(x)
    padded = keras.ops.convert_to_numpy(padded)[0, :, :, 0]
    assert padded.sum() == 64 and padded[12:20, 12:20].min() == 1


def test_lenet5_rejects_large_images():
    with pytest.raises(ValueError, match="up to 32x32"):
        build_model("lenet5", (64, 64, 1), 10)


def test_alexnet_reference_layout_params():
    model = build_model("alexnet", (227, 227, 3), 1000)
    assert model.count_params() == 62_378_344
    assert model.get_layer("pool5").output.shape[1:] == (6, 6, 256)


def test_resnet18_params_match_the_reference():
    model = build_model("resnet", (224, 224, 3), 1000, preset="resnet18")
    assert trainable_params(model) == 11_689_512


@pytest.mark.slow
def test_resnet34_and_50_params_match_the_reference():
    assert trainable_params(build_model("resnet", (224, 224, 3), 1000,
                                        preset="resnet34")) == 21_797_672
    assert trainable_params(build_model("resnet", (224, 224, 3), 1000,
                                        preset="resnet50")) == 25_557_032


def test_resnet_bottleneck_expands_and_projects():
    model = build_model("resnet", (16, 16, 3), 5, block="bottleneck", stage_blocks=(1, 1),
                        stage_filters=(4, 8))
    assert model.get_layer("stage2_block1_add").output.shape[1:] == (8, 8, 32)
    assert model.get_layer("stage1_block1_proj_conv") is not None  # 4 -> 16 channels


def test_vgg_keeps_pooling_only_while_the_map_is_larger_than_a_pixel():
    model = build_model("vgg", (8, 8, 1), 10, blocks=((4, 1),) * 5)
    pools = [layer for layer in model.layers if layer.name.endswith("_pool")]
    assert len(pools) == 3  # 8 -> 4 -> 2 -> 1, then no more pools
