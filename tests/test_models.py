import pytest
import torch

from pracset.errors import ConfigError, UnknownNameError
from pracset.models import MODELS, InputSpec, build_model

SPECS = {
    "digits": InputSpec(1, 8, 8, 10),
    "mnist": InputSpec(1, 28, 28, 10),
    "cifar100": InputSpec(3, 32, 32, 100),
}


@pytest.mark.parametrize("data", sorted(SPECS))
@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_fits_its_data_or_says_why(name, data):
    spec = SPECS[data]
    if min(spec.height, spec.width) < MODELS.get(name).min_size:
        with pytest.raises(ConfigError, match=f"model {name} needs images of at least"):
            build_model(name, spec)
        return
    model = build_model(name, spec, seed=0).eval()
    x = torch.randn(3, spec.channels, spec.height, spec.width)
    with torch.no_grad():
        assert model(x).shape == (3, spec.num_classes)


def test_parameter_counts_match_the_papers():
    count = lambda m: sum(p.numel() for p in m.parameters())
    # LeNet-300-100: 784*300+300 + 300*100+100 + 100*10+10
    assert count(build_model("lenet300", SPECS["mnist"])) == 266_610
    # Conv-2 on CIFAR-10 (Frankle & Carbin: 4.3M): 1,792 + 36,928 + 4,194,560 + 65,792 + 2,570
    assert count(build_model("conv2", InputSpec(3, 32, 32, 10))) == 4_301_642
    # ResNet-20 with 1x1 projection shortcuts: 0.27M weights in the He et al. network
    assert 270_000 < count(build_model("resnet20", InputSpec(3, 32, 32, 10))) < 280_000


def test_seed_makes_initialisation_reproducible():
    a = build_model("conv4", InputSpec(3, 16, 16, 10), seed=7)
    b = build_model("conv4", InputSpec(3, 16, 16, 10), seed=7)
    c = build_model("conv4", InputSpec(3, 16, 16, 10), seed=8)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)
    assert not torch.equal(a.state_dict()["features.0.weight"], c.state_dict()["features.0.weight"])


def test_torchvision_models_by_name_with_grayscale_input():
    model = build_model("torchvision/resnet18", InputSpec(1, 32, 32, 7)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(UnknownNameError, match="valid names: .*lenet300.*resnet20"):
        build_model("resnet21", SPECS["mnist"])
    with pytest.raises(UnknownNameError, match="unknown torchvision model 'nope'; valid names: .*resnet18"):
        build_model("torchvision/nope", SPECS["mnist"])
