"""One zero-argument factory per zoo model, for `edge-sparse build --model benchmarks/zoo_factories.py:<name>`
(`make zoo`, benchmarks/zoo.py): `edge_sparse.zoo_models.load_zoo_model(name, 10)`, untrained, a 10-way head
(the zoo's image folder holds Fashion-MNIST's 10 classes). Needs `make zoo-deps`."""
from edge_sparse.zoo_models import load_zoo_model

NUM_CLASSES = 10


def resnet18():
    return load_zoo_model("resnet18", NUM_CLASSES)


def mobilenet_v2():
    return load_zoo_model("mobilenet_v2", NUM_CLASSES)


def mnasnet0_5():
    return load_zoo_model("mnasnet0_5", NUM_CLASSES)


def mobilenet_v3_small():
    return load_zoo_model("mobilenet_v3_small", NUM_CLASSES)


def efficientnet_b0():
    return load_zoo_model("efficientnet_b0", NUM_CLASSES)


def shufflenet_v2_x0_5():
    return load_zoo_model("shufflenet_v2_x0_5", NUM_CLASSES)


def squeezenet1_1():
    return load_zoo_model("squeezenet1_1", NUM_CLASSES)


def densenet121():
    return load_zoo_model("densenet121", NUM_CLASSES)


def regnet_x_400mf():
    return load_zoo_model("regnet_x_400mf", NUM_CLASSES)


def convnext_tiny():
    return load_zoo_model("convnext_tiny", NUM_CLASSES)


def efficientnet_lite0():
    return load_zoo_model("efficientnet_lite0", NUM_CLASSES)


def mobilenetv3_small_100():
    return load_zoo_model("mobilenetv3_small_100", NUM_CLASSES)


def lcnet_050():
    return load_zoo_model("lcnet_050", NUM_CLASSES)


def mobilenetv4_conv_small():
    return load_zoo_model("mobilenetv4_conv_small", NUM_CLASSES)


def tinynet_e():
    return load_zoo_model("tinynet_e", NUM_CLASSES)


def fastvit_t8():
    return load_zoo_model("fastvit_t8", NUM_CLASSES)


def repvit_m0_9():
    return load_zoo_model("repvit_m0_9", NUM_CLASSES)


def ghostnet_100():
    return load_zoo_model("ghostnet_100", NUM_CLASSES)


def mobilevit_xxs():
    return load_zoo_model("mobilevit_xxs", NUM_CLASSES)


def efficientvit_b0():
    return load_zoo_model("efficientvit_b0", NUM_CLASSES)
