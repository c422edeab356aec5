"""MA-Net fidelity: sizes and MACs from docs/models.md §1.6, block semantics, MS-Celeb loader, export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from runtime.errors import CheckpointError, ModelError
from train.models import create_model, get_model_info
from train.models.manet import ChannelGate, MANet, MulScaleBlock, load_msceleb_pretrained
from train.models.profile import count_macs, count_params

PRE_EXTRACTOR = ("conv1", "bn1", "layer1", "layer2")


def _branch_params(model: torch.nn.Module, prefixes: tuple[str, ...]) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if n.split(".")[0] in prefixes)


@pytest.fixture(scope="module")
def full_model() -> MANet:
    torch.manual_seed(0)
    return create_model("manet", num_classes=7).eval()


def _tiny(seed: int = 0, **kwargs) -> MANet:
    torch.manual_seed(seed)
    return create_model("manet_tiny", **kwargs)


def test_registry_entries_and_preprocess_contract() -> None:
    for name in ("manet", "manet_tiny"):
        info = get_model_info(name)
        assert info.family == "manet"
        spec = info.preprocess
        assert spec.input_shape == (3, 224, 224)
        assert spec.mean == (0.0, 0.0, 0.0) and spec.std == (1.0, 1.0, 1.0)
        assert spec.scale == pytest.approx(1 / 255)


def test_param_counts_match_models_md(full_model: MANet) -> None:
    assert count_params(full_model) == 50_547_214
    assert _branch_params(full_model, PRE_EXTRACTOR) == 683_072
    for p in range(1, 5):
        assert _branch_params(full_model, (f"layer3_1_p{p}",)) == 2_116_840
        assert _branch_params(full_model, (f"layer3_1_p{p}", f"layer4_1_p{p}")) == 10_577_392
    assert _branch_params(full_model, ("layer3_2",)) == 1_510_912
    assert _branch_params(full_model, ("layer3_2", "layer4_2")) == 7_547_392
    assert _branch_params(full_model, ("fc_1", "fc_2")) == 7_182
    assert sum(b.numel() for b in full_model.buffers()) == 43_528


def test_param_count_with_msceleb_heads() -> None:
    assert count_params(create_model("manet", num_classes=12666)) == 63_535_348


def test_macs_match_models_md(full_model: MANet) -> None:
    macs = count_macs(full_model, (1, 3, 224, 224))
    assert macs == pytest.approx(3.638e9, rel=0.01)


def test_official_state_dict_key_names(full_model: MANet) -> None:
    keys = set(full_model.state_dict())
    for key in (
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.conv1.weight",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.bias",
        "layer3_1_p1.0.cbam.ChannelGate.mlp.1.weight",
        "layer3_1_p4.1.cbam.SpatialGate.spatial.conv.weight",
        "layer3_1_p4.1.cbam.SpatialGate.spatial.bn.weight",
        "layer4_1_p3.0.downsample.0.weight",  # 256 -> 512 at stride 1 still projects
        "layer3_2.0.conv1_2_1.weight",
        "layer3_2.0.bn1_2_4.bias",
        "layer4_2.1.conv2_2_4.weight",
        "layer4_2.1.bn2_2_1.running_mean",
        "fc_1.weight",
        "fc_2.bias",
    ):
        assert key in keys, key
    assert not any(k.startswith("layer3_2.1.downsample") for k in keys)
    spatial_bn = full_model.layer3_1_p1[0].cbam.SpatialGate.spatial.bn
    assert (spatial_bn.eps, spatial_bn.momentum) == (1e-5, 0.01)


def test_forward_shapes_and_fusion(full_model: MANet) -> None:
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        logits = full_model(x)
        heads = full_model.forward_heads(x)
    assert logits.shape == (2, 7)
    assert set(heads) == {"logits", "local", "global"}
    assert heads["local"].shape == heads["global"].shape == (2, 7)
    torch.testing.assert_close(heads["logits"], logits)
    torch.testing.assert_close(heads["logits"], 0.6 * heads["local"] + 0.4 * heads["global"])
    assert full_model.loss_weights == pytest.approx({"local": 0.6, "global": 0.4})


def test_beta_is_configurable() -> None:
    model = _tiny(beta=0.3).eval()
    assert model.loss_weights == pytest.approx({"local": 0.3, "global": 0.7})
    with torch.no_grad():
        heads = model.forward_heads(torch.rand(1, 3, 224, 224))
    torch.testing.assert_close(heads["logits"], 0.3 * heads["local"] + 0.7 * heads["global"])
    with pytest.raises(ModelError, match="beta"):
        create_model("manet_tiny", beta=1.5)


@pytest.mark.parametrize("shape", [(1, 3, 192, 192), (1, 1, 224, 224), (1, 3, 256, 256), (3, 224, 224)])
def test_wrong_input_shapes_raise(shape: tuple[int, ...]) -> None:
    model = _tiny().eval()
    with pytest.raises(ModelError, match=r"224.*got \(" + ", ".join(map(str, shape)) + r"\)"):
        model(torch.zeros(shape))


def test_unknown_variant_raises() -> None:
    with pytest.raises(ModelError, match="variant"):
        create_model("manet_tiny", variant="2022")


def test_local_branch_routes_each_patch_to_its_own_subnet() -> None:
    # GAP after stitching is order-invariant, so check the patch -> sub-network assignment directly.
    model = _tiny().eval()
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        feat = model.features(x)
        quads = [feat[:, :, :14, :14], feat[:, :, :14, 14:], feat[:, :, 14:, :14], feat[:, :, 14:, 14:]]
        pooled = [
            getattr(model, f"layer4_1_p{p}")(getattr(model, f"layer3_1_p{p}")(q)).mean((2, 3))
            for p, q in enumerate(quads, start=1)
        ]
        expected = model.fc_1(torch.stack(pooled).mean(0))
        torch.testing.assert_close(model.forward_heads(x)["local"], expected)


def test_channel_gate_pooling_equals_kernel_pooling() -> None:
    # The reference pools with avg/max_pool2d over the whole map; mean/amax must be identical.
    gate = ChannelGate(32, 16).eval()
    x = torch.randn(3, 32, 7, 7)
    h, w = x.shape[2:]
    att = gate.mlp(F.avg_pool2d(x, (h, w), stride=(h, w))) + gate.mlp(F.max_pool2d(x, (h, w), stride=(h, w)))
    with torch.no_grad():
        torch.testing.assert_close(gate(x), x * torch.sigmoid(att)[:, :, None, None])


def _reference_mulscale(block: MulScaleBlock, x: torch.Tensor, descending: bool) -> torch.Tensor:
    """docs/models.md §1.3 written out group by group, with every ReLU out of place."""
    out = F.relu(block.bn1(block.conv1(x)))
    xs = torch.split(out, block.scale_width, dim=1)

    def g(path: int, k: int, t: torch.Tensor) -> torch.Tensor:
        return getattr(block, f"bn{path}_2_{k}")(getattr(block, f"conv{path}_2_{k}")(t))

    a1 = g(1, 1, xs[0])
    a2 = g(1, 2, F.relu(a1) + xs[1])
    a3 = g(1, 3, F.relu(a2) + xs[2])
    a4 = g(1, 4, F.relu(a3) + xs[3])
    if descending:
        b4 = g(2, 4, xs[3])
        b3 = g(2, 3, F.relu(b4) + xs[2])
        b2 = g(2, 2, F.relu(b3) + xs[1])
        b1 = g(2, 1, F.relu(b2) + xs[0])
    else:
        b1 = g(2, 1, xs[0])
        b2 = g(2, 2, F.relu(b1) + xs[1])
        b3 = g(2, 3, F.relu(b2) + xs[2])
        b4 = g(2, 4, F.relu(b3) + xs[3])
    identity = x if block.downsample is None else block.downsample(x)
    return F.relu(torch.cat([a1, a2, a3, a4], 1) + torch.cat([b1, b2, b3, b4], 1) + identity)


@pytest.mark.parametrize("variant", ["2021", "2023"])
def test_mulscale_block_matches_reference(variant: str) -> None:
    torch.manual_seed(0)
    block = MulScaleBlock(16, 32, stride=2, variant=variant)
    for m in block.modules():  # non-trivial BN statistics so a wrong pairing shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    block.eval()
    x = torch.randn(2, 16, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(block(x), _reference_mulscale(block, x, descending=variant == "2023"))


def test_variants_share_keys_but_differ_in_output() -> None:
    m2021 = _tiny(variant="2021").eval()
    m2023 = create_model("manet_tiny", variant="2023").eval()
    sd2021, sd2023 = m2021.state_dict(), m2023.state_dict()
    assert list(sd2021) == list(sd2023)
    assert all(sd2021[k].shape == sd2023[k].shape for k in sd2021)
    m2023.load_state_dict(sd2021)
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        h21, h23 = m2021.forward_heads(x), m2023.forward_heads(x)
    torch.testing.assert_close(h21["local"], h23["local"])  # only the global branch differs
    assert not torch.allclose(h21["global"], h23["global"])


def test_msceleb_loader_round_trip(tmp_path) -> None:
    source = _tiny(seed=1, num_classes=12666)
    path = tmp_path / "Pretrained_on_MSCeleb.pth.tar"
    torch.save({"state_dict": {"module." + k: v for k, v in source.state_dict().items()}, "epoch": 40}, path)

    target = _tiny(seed=2, num_classes=7)
    fc_before = {k: v.clone() for k, v in target.state_dict().items() if k.startswith("fc_")}
    report = load_msceleb_pretrained(target, path)

    assert sorted(report.dropped) == sorted(f"module.fc_{i}.{p}" for i in (1, 2) for p in ("weight", "bias"))
    assert report.loaded == len(source.state_dict()) - 4
    assert report.unexpected == ()
    tgt = target.state_dict()
    for k, v in source.state_dict().items():
        if k.startswith("fc_"):
            continue
        assert torch.equal(tgt[k], v), k
    assert target.fc_1.out_features == target.fc_2.out_features == 7
    for k, v in fc_before.items():
        assert torch.equal(tgt[k], v), k
    with torch.no_grad():
        assert target(torch.rand(1, 3, 224, 224)).shape == (1, 7)


def test_msceleb_loader_accepts_bare_state_dict_without_counters() -> None:
    source = _tiny(seed=1, num_classes=12666)
    bare = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    target = _tiny(seed=2)
    report = load_msceleb_pretrained(target, bare)
    assert report.missing and all(k.endswith("num_batches_tracked") for k in report.missing)
    assert torch.equal(target.conv1.weight, source.conv1.weight)


def test_msceleb_loader_rejects_bad_checkpoints(tmp_path) -> None:
    good = {k: v for k, v in _tiny(seed=1).state_dict().items()}

    bad_shape = dict(good)
    bad_shape["layer3_2.0.conv1_2_1.weight"] = torch.zeros(3, 3, 3, 3)
    with pytest.raises(CheckpointError, match=r"layer3_2\.0\.conv1_2_1\.weight checkpoint \(3, 3, 3, 3\)"):
        load_msceleb_pretrained(_tiny(), bad_shape)

    renamed = dict(good)
    renamed["layer1.0.conv1.weigth"] = renamed.pop("layer1.0.conv1.weight")
    with pytest.raises(CheckpointError, match=r"missing backbone keys: layer1\.0\.conv1\.weight"):
        load_msceleb_pretrained(_tiny(), renamed)
    report = load_msceleb_pretrained(_tiny(), renamed, strict=False)
    assert report.unexpected == ("layer1.0.conv1.weigth",) and "layer1.0.conv1.weight" in report.missing

    # Full-size checkpoint into the tiny model: every backbone shape differs.
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_msceleb_pretrained(_tiny(), {"conv1.weight": torch.zeros(64, 3, 7, 7)}, strict=False)

    corrupt = tmp_path / "corrupt.pth.tar"
    corrupt.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="corrupt.pth.tar"):
        load_msceleb_pretrained(_tiny(), corrupt)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_msceleb_pretrained(_tiny(), tmp_path / "missing.pth.tar")
    not_sd = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_sd)
    with pytest.raises(CheckpointError, match="no state dict"):
        load_msceleb_pretrained(_tiny(), not_sd)


def test_short_training_reduces_loss() -> None:
    model = _tiny(seed=0, num_classes=2).train()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 224, 224, generator=gen)
    y = torch.tensor([0, 1, 0, 1])
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for _ in range(8):
        heads = model.forward_heads(x)
        loss = sum(w * F.cross_entropy(heads[name], y) for name, w in model.loss_weights.items())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0]


class _Heads(torch.nn.Module):
    """Exports all three outputs (docs/models.md §1.7.5: parity must check both heads)."""

    def __init__(self, model: MANet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.model.forward_heads(x)
        return h["logits"], h["local"], h["global"]


@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning")
def test_onnx_export_dynamic_batch_matches_pytorch(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    # .eval() on the wrapper: the exporter restores the wrapper's mode afterwards, and a
    # wrapper left in training mode would switch the model's BN layers back to batch statistics.
    wrapper = _Heads(_tiny(seed=3)).eval()
    path = tmp_path / "manet_tiny.onnx"
    names = ["logits", "local", "global"]
    torch.onnx.export(
        wrapper,
        (torch.rand(1, 3, 224, 224),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["input"],
        output_names=names,
        dynamic_axes={n: {0: "batch"} for n in ["input", *names]},
    )
    graph = onnx.load(str(path)).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[1:]] == [3, 224, 224]

    x = torch.rand(3, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = [t.numpy() for t in wrapper(x)]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(names, {"input": x.numpy()})
    for name, e, g in zip(names, expected, got):
        assert g.shape == (3, 7), name
        np.testing.assert_allclose(g, e, atol=1e-4, rtol=0, err_msg=name)
