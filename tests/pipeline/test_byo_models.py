"""Bring your own classifier: torchvision, timm and user-defined networks, from the user's own
checkpoint in the layouts people save, through every stage (train with `ama`, slim at 0.5 with
recovery, prune parity, export parity, INT8, a served prediction equal to validate's)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.__main__ import main
from pipeline.config import load_config
from pipeline.runner import run_pipeline
from tests.fake_datasets import make_imagefolder

REPO = Path(__file__).resolve().parents[2]
USER_FILE = REPO / "tests" / "fixtures" / "user_cifar_resnet.py"
timm = pytest.importorskip("timm", reason="timm is in the dev extra: pip install -e '.[dev]'")


def save_layout(state: dict, path: Path, layout: str) -> Path:
    """`state` saved as people save checkpoints."""
    from safetensors.torch import save_file

    state = {k: v.clone() for k, v in state.items()}
    if layout == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        return path
    if layout == "bare":
        obj = state
    elif layout == "ddp_nested":  # DataParallel / DDP prefixes, nested, beside training state
        obj = {
            "epoch": 7,
            "best_acc1": 0.5,
            "state_dict": {f"module.{k}": v for k, v in state.items()},
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]},
        }
    elif layout == "compiled":  # torch.compile's prefix, under `model`
        obj = {"model": {f"_orig_mod.{k}": v for k, v in state.items()}}
    elif layout == "model_state_dict":
        obj = {"model_state_dict": state, "epoch": 3}
    elif layout == "net":
        obj = {"net": state, "acc": 0.4}
    else:
        raise ValueError(layout)
    torch.save(obj, path)
    return path


def user_weights(source: str, name: str, classes: int, path: Path, layout: str) -> Path:
    """Random weights of the network, saved as the user's checkpoint (`classes` outputs)."""
    from pipeline.models.external import build_network

    torch.manual_seed(1)
    net = build_network(source, name, {}, classes)
    return save_layout(net.state_dict(), path, layout)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("byo"), n_train=8, n_test=4)


def overrides(root: Path, data: Path, name: str) -> list[str]:
    return [
        f"run_dir={root}",
        f"name={name}",
        "data.name=imagefolder",
        f"data.root={data}",
        "data.val_fraction=0",
        "data.input_size=32",
        "data.resize=32",
        "train.method=ama",
        "train.epochs=1",
        "train.batch_size=8",
        "train.lr=0.01",
        "train.checkpoint_every_epochs=null",
        "slim.ratio=0.5",
        "slim.epochs=1",
        "prune.parity_samples=12",
        "export.parity_samples=12",
        "export.calibration_samples=12",
        "export.min_top1_agreement=0.9",
        "validate.latency.warmup=1",
        "validate.latency.iters=10",
        "validate.latency.throughput_batch=4",
        "validate.latency.throughput_iters=1",
        "validate.gates.min_top1=0.0",
        "validate.gates.max_top1_drop=1.0",
        "validate.gates.max_top1_drop_int8=1.0",
        "validate.sweep.batch_sizes=[1]",
        "validate.sweep.threads=[1]",
        "validate.sweep.min_runs=5",
        "validate.sweep.max_seconds=0.01",
        "validate.sweep.warmup=0",
    ]


# (source, name, checkpoint classes, layout); 1000 classes: an ImageNet head replaced on load
MATRIX = [
    ("torchvision", "resnet18", 1000, "ddp_nested"),
    ("torchvision", "mobilenet_v3_small", 3, "safetensors"),
    ("torchvision", "efficientnet_b0", 1000, "compiled"),
    ("torchvision", "regnet_y_400mf", 3, "bare"),
    ("torchvision", "convnext_tiny", 1000, "model_state_dict"),
    ("timm", "resnet18", 3, "net"),
    ("timm", "mobilenetv3_small_100", 1000, "bare"),
    ("timm", "efficientnet_b0", 3, "ddp_nested"),
    ("python", f"{USER_FILE}:resnet20", 3, "compiled"),
]


@pytest.mark.parametrize(("source", "name", "classes", "layout"), MATRIX)
def test_whole_pipeline(source, name, classes, layout, images, tmp_path, one_thread):
    weights = user_weights(source, name, classes, tmp_path / f"user.{layout}", layout)
    cfg = load_config(
        None,
        [
            *overrides(tmp_path / "runs", images.folder, "byo"),
            f"model.source={source}",
            f"model.name={name}",
            f"model.weights={weights}",
            # the side-by-side ONNX measurement is the same code for every network: once
            f"slim.compare={source == 'python'}",
        ],
    )
    m = run_pipeline(cfg)

    train = m["train"].metrics
    assert train["weights"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert (train["weights"]["head_replaced"] is not None) == (classes != 3)
    assert len(train["teacher_warmup"]) == 1  # a loaded classifier: its self-teacher first
    assert m["train"].key != ""  # the checkpoint's content is part of the key (tested below)

    pruning = m["slim"].metrics["pruning"]
    assert pruning["after"]["macs"] < pruning["before"]["macs"] / 1.5
    compared = m["slim"].metrics["compression"]
    assert (compared is not None) == (source == "python")
    if compared:
        assert compared["slim"]["macs"] < compared["unpruned"]["macs"]
        assert "kept all their channels" in (cfg.run_path / "report.md").read_text()
    if source == "python":  # the lambda shortcut ties the residual trunk: kept whole, named
        roots = [k["root"] for k in pruning["kept_whole"]]
        assert roots == ["net.conv1"]
        assert "net.layer1.0.conv2" in pruning["kept_whole"][0]["layers"]
    else:  # depthwise and grouped convolutions, squeeze-excitation, layer norms: all followed
        assert pruning["kept_whole"] == []

    prune = m["prune"].metrics
    assert prune["parity"]["max_abs_diff"] <= cfg.prune.atol
    assert prune["params_deployed"] < pruning["before"]["params"]

    export = m["export"].metrics
    assert export["onnx"]["parity"]["max_abs_diff"] <= cfg.export.atol
    int8 = export["onnx_int8"]["parity"]
    assert int8["samples"] == 12 and 0.0 <= int8["top1_agreement"] <= 1.0

    served_equals_validated(cfg, m)


def served_equals_validated(cfg, m) -> None:
    """The server's own preprocessing of the raw test files gives validate's tensors, and the
    served model's probabilities on them are validate's."""
    from PIL import Image

    from pipeline.data import build_data
    from serving.classify import softmax
    from serving.predictor import OrtPredictor

    pred = OrtPredictor(m["export"].folder / "model.onnx")
    bundle = build_data(cfg.data, cfg.model)
    files = sorted((cfg.data.root / "test").rglob("*.png"))[:6]
    raw = [np.array(Image.open(f).convert("RGB")) for f in files]  # writable
    ref = bundle.test.transform
    expected = torch.stack([ref(torch.from_numpy(a).permute(2, 0, 1)) for a in raw]).numpy()
    batch = pred.preprocess(raw)
    assert np.abs(batch - expected).max() < 1e-5
    served, validated = softmax(pred.run(batch)), softmax(pred.run(expected))
    assert np.abs(served - validated).max() < 1e-4


@pytest.mark.parametrize(
    ("source", "name"),
    [("torchvision", "resnet18"), ("python", f"{USER_FILE}:resnet20")],
)
def test_deploy_as_loaded_equals_the_users_own_module(source, name, images, tmp_path, one_thread):
    """train.epochs 0, slim off: the deployed classifier's logits are those of the user's own
    module built from the same factory and checkpoint; the report gives its top-1 as loaded."""
    from pipeline.data import build_data
    from pipeline.models.external import build_network
    from pipeline.models.io import build_backbone, load_weights, read_spec

    weights = user_weights(source, name, 3, tmp_path / "user.pth", "ddp_nested")
    cfg = load_config(
        None,
        [
            *overrides(tmp_path / "runs", images.folder, "as-loaded"),
            f"model.source={source}",
            f"model.name={name}",
            f"model.weights={weights}",
            "train.epochs=0",
            "slim.ratio=0",
        ],
    )
    m = run_pipeline(cfg)
    assert "teacher_warmup" not in m["train"].metrics  # nothing trains

    own = build_network(source, name, {}, 3)
    state = torch.load(weights, weights_only=True)["state_dict"]
    own.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    folder = m["prune"].folder
    deployed = load_weights(build_backbone(read_spec(folder, "classifier")), folder, "classifier")
    x = build_data(cfg.data, cfg.model).test.stack(12)
    with torch.no_grad():
        assert torch.equal(deployed(x), own.eval()(x))

    report = (cfg.run_path / "report.md").read_text()
    top1 = m["train"].metrics["test_top1"]
    assert "Not trained (train.epochs 0): the model as loaded has test top-1" in report
    assert f"{100 * top1:.2f}%" in report
    assert m["validate"].metrics["artefacts"]["torch"]["top1"] == pytest.approx(top1)


def test_changed_checkpoint_contents_retrain(images, tmp_path, one_thread):
    """The checkpoint's sha256 is in the train stage's key: new weights at the same path
    retrain; the same weights do not."""
    from pipeline.runner import key_of

    path = user_weights("torchvision", "resnet18", 3, tmp_path / "w.pth", "bare")
    args = [
        *overrides(tmp_path / "runs", images.folder, "keyed"),
        "model.source=torchvision",
        "model.name=resnet18",
        f"model.weights={path}",
    ]
    cfg = load_config(None, args)
    first = key_of("train", cfg, {}, "fp")
    assert key_of("train", load_config(None, args), {}, "fp") == first
    state = torch.load(path, weights_only=True)
    state["fc.bias"] = state["fc.bias"] + 1
    torch.save(state, path)
    assert key_of("train", load_config(None, args), {}, "fp") != first


BAD = {
    "unresolved import": (["model.source=python", "model.name=no_such_pkg.models:net"], 2),
    "missing file": (["model.source=python", "model.name=nowhere/net.py:net"], 2),
    "factory raises": (
        ["model.source=python", f"model.name={USER_FILE}:resnet20", "model.kwargs={{depth: oops}}"],
        2,
    ),
    "not logits": (["model.source=python", "model.name={features}"], 2),
    "hub weights": (
        ["model.source=torchvision", "model.name=resnet18", "model.kwargs={{weights: DEFAULT}}"],
        2,
    ),
    "unknown torchvision": (["model.source=torchvision", "model.name=resnet1000"], 2),
    "not a state dict": (
        ["model.source=torchvision", "model.name=resnet18", "model.weights={list}"],
        8,
    ),
    "other architecture": (
        ["model.source=torchvision", "model.name=resnet18", "model.weights={other}"],
        8,
    ),
    "unknown stage": (
        ["model.source=torchvision", "model.name=resnet18", "model.stages=[layer1, nope]"],
        2,
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_models_stop_before_anything_runs(case, images, tmp_path, capsys):
    feats = tmp_path / "feats.py"
    feats.write_text(
        "from torch import nn\n"
        "def features(num_classes=3):\n"
        "    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())\n"
    )
    lst = tmp_path / "list.pt"
    torch.save([torch.zeros(3)], lst)
    other = user_weights("torchvision", "mobilenet_v3_small", 3, tmp_path / "o.pth", "bare")
    args, code = BAD[case]
    args = [a.format(features=f"{feats}:features", list=lst, other=other) for a in args]
    runs = tmp_path / "runs"
    config = tmp_path / "bad.yaml"
    config.write_text("name: bad\n")
    sets = [x for a in overrides(runs, images.folder, "bad") + args for x in ("--set", a)]
    assert main(["run", str(config), *sets]) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert not any(runs.glob("bad/0*_*/manifest.json"))  # nothing ran


def test_three_stages_and_named_stages(tmp_path):
    """A three-stage network gets a three-level self-teacher; `model.stages` picks others;
    stage features that do not end in a ReLU (ConvNeXt) are found too."""
    from pipeline.models.external import build_classifier

    clf, _ = build_classifier("python", f"{USER_FILE}:resnet20", {}, 3, 32)
    assert clf.stages == ["layer1", "layer2", "layer3"]
    assert clf.stage_channels == [16, 32, 64]
    named, _ = build_classifier("torchvision", "resnet18", {}, 3, 32, ["layer2", "layer4"])
    logits, feats = named.forward_with_features(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 3) and [f.shape[1] for f in feats] == [128, 512]
    cnx, _ = build_classifier("torchvision", "convnext_tiny", {}, 3, 32)
    _, feats = cnx.forward_with_features(torch.randn(2, 3, 32, 32))
    assert [f.shape[1] for f in feats] == [96, 192, 384, 768]
    assert min(float(f.detach().min()) for f in feats) < 0  # not after a ReLU


def test_teacher_warmup_leaves_the_classifier_untouched():
    """The warm-up trains the self-teacher only: the classifier's weights and batch-norm
    statistics are bit for bit the same after it."""
    from accelerate import Accelerator

    from pipeline.models import SelfDistillModel
    from pipeline.models.external import build_classifier
    from pipeline.models.self_teacher import SelfTeacher
    from pipeline.training.warmup import warm_up_aux

    torch.manual_seed(0)
    clf, _ = build_classifier("python", f"{USER_FILE}:resnet20", {}, 3, 16)
    model = SelfDistillModel(clf, SelfTeacher(clf.stage_channels, 3)).train()
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    aux_before = {k: v.clone() for k, v in model.aux.state_dict().items()}
    loader = [(torch.randn(8, 3, 16, 16), torch.randint(0, 3, (8,))) for _ in range(3)]
    rows = warm_up_aux(model, loader, 2, 0.05, Accelerator(cpu=True))
    assert [r["epoch"] for r in rows] == [1, 2]
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(not torch.equal(aux_before[k], v) for k, v in model.aux.state_dict().items())
    assert model.backbone.training  # its mode restored


def test_preprocessing_comes_from_the_model_unless_data_overrides_it():
    from pipeline.data import resolve_preset

    def preset(*sets):
        cfg = load_config(None, list(sets))
        return resolve_preset(cfg.data, cfg.model)

    timm_cfg = timm.models.get_pretrained_cfg("efficientnet_b0")
    p = preset("model.source=timm", "model.name=efficientnet_b0")
    assert (p.input_size, p.mean, p.std) == (224, tuple(timm_cfg.mean), tuple(timm_cfg.std))
    assert p.resize == int(224 / timm_cfg.crop_pct)
    # a smaller input keeps the model's crop fraction; data.* wins over the model
    assert preset(
        "model.source=timm", "model.name=efficientnet_b0", "data.input_size=32"
    ).resize == int(32 / timm_cfg.crop_pct)
    p = preset(
        "model.source=timm",
        "model.name=efficientnet_b0",
        "data.mean=[0.5, 0.5, 0.5]",
        "data.resize=40",
    )
    assert p.mean == (0.5, 0.5, 0.5) and p.resize == 40
    p = preset("model.source=torchvision", "model.name=resnet18")
    assert p.mean == (0.485, 0.456, 0.406) and p.input_size == 32  # the data set's size
    assert preset().mean == (0.5, 0.5, 0.5)  # the built-in model: the data set's preset


def test_a_graph_the_pruner_cannot_map_is_kept_whole_not_a_failure(one_thread):
    """ShuffleNet's channel shuffle (split, view by group count, concatenation) is a reshape
    Torch-Pruning's graph cannot map: the groups tied to it are kept whole and named, the
    network still runs and its logits keep their shape."""
    from pipeline.config.slim import SlimConfig
    from pipeline.models import SelfDistillModel
    from pipeline.models.external import build_classifier
    from pipeline.models.self_teacher import SelfTeacher
    from pipeline.training.channel_pruning import prune_channels

    clf, _ = build_classifier("torchvision", "shufflenet_v2_x0_5", {}, 3, 32)
    wrapper = SelfDistillModel(clf, SelfTeacher(clf.stage_channels, 3))
    x = torch.randn(2, 3, 32, 32)
    record = prune_channels(wrapper, x, SlimConfig(ratio=0.5))
    assert record["kept_whole"], "nothing was reported kept whole"
    assert all(k["why"] and k["layers"] for k in record["kept_whole"])
    assert "conv5.0" in {k["root"].removeprefix("net.") for k in record["kept_whole"]}
    assert wrapper(x).logits.shape == (2, 3)
