"""The slim stage: channel pruning through the dependency graph, the pruned architecture as data,
targets and their errors, recovery through the training code, and the compression table."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.config import SlimConfig, load_config
from pipeline.errors import ConfigError, StageError
from pipeline.models import count_macs
from pipeline.models.channels import layer_shapes
from pipeline.models.io import read_spec, save_model
from pipeline.report.content import _compression
from pipeline.training.channel_pruning import _layer_named, prune_channels
from pipeline.training.model import build_training_model
from tests.specs import model_spec


def _wrapper(arch: str, method: str = "ama", width: float = 0.5):
    spec = model_spec(arch, method, width=width, num_classes=10, feature_taps=method != "ce")
    torch.manual_seed(0)
    wrapper, m = build_training_model(spec)
    return wrapper.eval(), spec


def _stage_widths(wrapper, x):
    with torch.no_grad():
        return [int(f.shape[1]) for f in wrapper.backbone.forward_features(x)]


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50", "wrn16_2"])
def test_pruned_network_runs_is_smaller_and_rebuilds_from_its_spec(arch, tmp_path, one_thread):
    wrapper, spec = _wrapper(arch, width=0.5 if arch != "wrn16_2" else 1.0)
    x = torch.randn(2, 3, 32, 32)
    macs_before = count_macs(wrapper.backbone, x[:1])
    record = prune_channels(wrapper, x, SlimConfig(ratio=0.5, round_to=8))
    widths = _stage_widths(wrapper, x)
    assert record["after"]["macs"] < 0.5 * macs_before
    assert count_macs(wrapper.backbone, x[:1]) == record["after"]["macs"]
    # every pruned width is a multiple of round_to; the head still has 10 outputs
    for name, m in wrapper.backbone.named_modules():
        if isinstance(m, nn.Conv2d):
            assert m.out_channels % 8 == 0, (name, m.out_channels)
    assert wrapper.backbone.fc.out_features == 10
    # the self-teacher's laterals read the pruned stage widths; its own widths are kept
    lat_in = [lat.conv.in_channels for lat in wrapper.aux.lateral]
    assert lat_in == widths
    out = wrapper(x)
    assert out.aux_logits.shape == (2, 10)
    # the architecture travels as data: rebuild from the spec, load strictly, same logits
    wrapper.backbone.stage_channels = widths
    pruned = spec.replace(shapes=layer_shapes(wrapper), stage_channels=widths)
    save_model(wrapper, pruned, tmp_path, "model")
    again, _ = build_training_model(read_spec(tmp_path, "model"))
    from safetensors.torch import load_file

    again.load_state_dict(load_file(str(tmp_path / "model.safetensors")), strict=True)
    again.eval()
    with torch.no_grad():
        assert torch.equal(again(x).logits, wrapper(x).logits)
        assert torch.equal(again.deployable()(x), wrapper.deployable()(x))


def test_round_to_never_leaves_a_layer_whole_at_a_high_ratio(one_thread):
    """Rounding 16 channels at ratio 0.7 (4 kept) down to a multiple of 8 gives 0, which
    Torch-Pruning refuses, leaving the layer whole: the 16-channel stage keeps 8 instead, and
    a higher ratio never keeps more MACs than a lower one."""
    x = torch.randn(2, 3, 32, 32)
    widths, macs = {}, {}
    for ratio in (0.5, 0.7, 0.85):
        wrapper, _ = _wrapper("resnet18", width=0.25)  # stages of 16, 32, 64, 128 channels
        record = prune_channels(wrapper, x, SlimConfig(ratio=ratio, round_to=8))
        widths[ratio], macs[ratio] = _stage_widths(wrapper, x), record["after"]["macs"]
        for name, m in wrapper.backbone.named_modules():
            if isinstance(m, nn.Conv2d):
                assert m.out_channels % 8 == 0 and m.out_channels >= 8, (name, m.out_channels)
    assert widths == {0.5: [8, 16, 32, 64], 0.7: [8, 8, 16, 32], 0.85: [8, 8, 8, 16]}
    assert macs[0.5] > macs[0.7] > macs[0.85]


@pytest.mark.parametrize("arch", ["resnet18", "wrn16_2"])
def test_byot_heads_do_not_hold_the_classifier_back(arch, one_thread):
    """BYOT's shallow heads end at the classifier's last-stage width (the hint compares them
    channel by channel): they lose the same channels, and the classifier is pruned exactly as
    it is without them."""
    x = torch.randn(2, 3, 32, 32)
    wrappers, shapes = {}, {}
    for method in ("ce", "byot"):
        wrapper, _ = _wrapper(arch, method=method, width=0.5 if arch != "wrn16_2" else 1.0)
        prune_channels(wrapper, x, SlimConfig(ratio=0.25, round_to=2))
        wrappers[method] = wrapper
        shapes[method] = {n: tuple(p.shape) for n, p in wrapper.backbone.named_parameters()}
    widths = _stage_widths(wrappers["byot"], x)
    assert widths == _stage_widths(wrappers["ce"], x)
    # byot's classifier may add feature taps (pre-activation nets); all of ce's layers match
    assert {n: shapes["byot"][n] for n in shapes["ce"]} == shapes["ce"]
    last = widths[-1]
    wrapper, heads = wrappers["byot"], wrappers["byot"].aux
    assert [m.out_channels for m in heads.tied_to_classifier() if isinstance(m, nn.Conv2d)] == [
        last
    ] * len(heads.fcs)
    assert [fc.in_features for fc in heads.fcs] == [last] * len(heads.fcs)
    # the heads' inner widths and outputs are theirs: not pruned
    assert all(fc.out_features == 10 for fc in heads.fcs)
    out = wrapper(x)
    for f in out.aux_head_features:  # the hint still lines up one to one
        assert f.shape == (2, last)


@pytest.mark.parametrize("importance", ["l1", "l2", "bn_scale", "taylor"])
@pytest.mark.parametrize("allocation", ["layer", "global"])
def test_every_importance_and_allocation_prunes(importance, allocation, one_thread):
    wrapper, _ = _wrapper("resnet18", width=0.25)
    with torch.no_grad():  # trained scales differ; freshly built ones are all 1 (a tie)
        for m in wrapper.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.1, 1.0)
    x = torch.randn(8, 3, 32, 32)
    batches = [(x, torch.randint(0, 10, (8,)))]
    cfg = SlimConfig(ratio=0.4, importance=importance, allocation=allocation, round_to=None)
    record = prune_channels(wrapper, x, cfg, batches=batches)
    assert record["after"]["params"] < record["before"]["params"]
    assert torch.isfinite(wrapper(x).logits).all()


def test_importance_decides_which_channels_go(one_thread):
    """Magnitude importance keeps the largest filters: zero half of a layer's filters and the
    pruned layer keeps exactly the other half."""
    wrapper, _ = _wrapper("resnet18", method="ce", width=0.25)
    conv = wrapper.backbone.stages[0][0].conv1  # an internal width, free of residual couplings
    with torch.no_grad():
        conv.weight[::2] = 0.0
        kept = conv.weight[1::2].clone()
    prune_channels(wrapper, torch.randn(2, 3, 32, 32), SlimConfig(ratio=0.5, round_to=None))
    assert conv.out_channels == kept.shape[0]
    # every zeroed filter went (the input channels were pruned too, so compare filter norms)
    assert (conv.weight.abs().sum(dim=(1, 2, 3)) > 0).all()


def test_macs_budget_is_met_in_steps_and_an_unreachable_one_names_the_closest(one_thread):
    wrapper, _ = _wrapper("resnet18", method="ce", width=0.25)
    x = torch.randn(2, 3, 32, 32)
    full = count_macs(wrapper.backbone, x[:1])
    record = prune_channels(wrapper, x, SlimConfig(macs=full * 0.5, round_to=None))
    assert record["after"]["macs"] <= full * 0.5
    assert len(record["history"]) > 2  # several steps, stopped as soon as it was met
    assert record["history"][-2]["macs"] > full * 0.5

    wrapper, _ = _wrapper("resnet18", method="ce", width=0.25)
    with pytest.raises(ConfigError, match=r"cannot be reached.*at best") as err:
        prune_channels(wrapper, x, SlimConfig(macs=10.0, max_ratio=0.3, round_to=None))
    assert "slim.max_ratio" in str(err.value)


def test_latency_budget_uses_the_measurement_it_is_given(one_thread):
    wrapper, _ = _wrapper("resnet18", method="ce", width=0.25)
    x = torch.randn(2, 3, 32, 32)
    seen = []

    def fake_latency(classifier):  # stands in for ONNX Runtime: proportional to MACs
        ms = count_macs(classifier, x[:1]) / 1e7
        seen.append(ms)
        return ms

    full = seen and seen[0] or count_macs(wrapper.backbone, x[:1]) / 1e7
    record = prune_channels(
        wrapper, x, SlimConfig(latency_ms=full * 0.6, round_to=None), latency_ms=fake_latency
    )
    assert record["after"]["latency_ms"] <= full * 0.6 < record["history"][-2]["latency_ms"]
    assert len(seen) == len(record["history"])


def test_excluded_layer_keeps_its_width_and_unknown_names_are_refused(one_thread):
    wrapper, _ = _wrapper("resnet18", method="ce", width=0.25)
    x = torch.randn(2, 3, 32, 32)
    before = wrapper.backbone.stages[1][0].conv1.out_channels
    other = wrapper.backbone.stages[2][0].conv1.out_channels
    prune_channels(wrapper, x, SlimConfig(ratio=0.5, exclude=["stages.1.0.conv1"]))
    assert wrapper.backbone.stages[1][0].conv1.out_channels == before
    assert wrapper.backbone.stages[2][0].conv1.out_channels == other // 2
    with pytest.raises(ConfigError, match="not a layer of the classifier"):
        prune_channels(
            _wrapper("resnet18", "ce", 0.25)[0], x, SlimConfig(ratio=0.5, exclude=["nope"])
        )


def test_a_failing_layer_is_named_with_the_option_that_leaves_it_out():
    class Odd(nn.Module):
        def forward(self, x):
            raise RuntimeError("shape mismatch")

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Sequential(nn.Conv2d(3, 4, 1), Odd())

        def forward(self, x):
            return self.backbone(x)

    net = Net()
    with pytest.raises(StageError, match=r"backbone\.1.*slim\.exclude: \[1\]"):
        with _layer_named(net, "run the pruned network"):
            net(torch.zeros(1, 3, 4, 4))


@pytest.mark.parametrize(
    "sets, message",
    [
        (["slim.ratio=1.0"], "slim.ratio"),
        (["slim.ratio=-0.1"], "slim.ratio"),
        (["slim.ratio=0.5", "slim.macs=1e6"], "one pruning target"),
        (["slim.method=nope"], "unknown recovery method"),
        (["slim.epochs=2", "slim.warmup_epochs=2"], "warmup_epochs"),
        (["slim.teacher=yes"], "slim.teacher"),
        (["slim.teacher=unpruned"], r"slim\.teacher: unpruned needs slimming on.*slim\.ratio"),
        (["slim.init=scratch"], r"slim\.init: scratch needs slimming on.*slim\.ratio"),
        (
            ["slim.ratio=0.5", "slim.teacher=none", "slim.teacher_weight=2"],
            r"teacher_weight.*slim\.teacher: unpruned",
        ),
        (
            ["slim.ratio=0.5", "slim.teacher=none", "slim.teacher_temperature=2"],
            r"teacher_temperature.*'none'",
        ),
        (["slim.teacher_weight=2"], r"teacher_weight.*no recovery for slim\.teacher 'auto'"),
        (
            ["slim.ratio=0.5", "slim.epochs=0", "slim.teacher_temperature=2"],
            r"teacher_temperature.*0 recovery epochs",
        ),
        (["slim.ratio=0.5", "slim.scratch_epochs=3"], r"scratch_epochs.*slim\.init: scratch"),
        (["slim.ratio=0.5", "slim.scratch_lr=0.1"], r"scratch_lr.*slim\.init: scratch"),
        (["slim.ratio=0.5", "slim.init=scratch", "slim.epochs=0"], "untrained network"),
        (["slim.ratio=0.5", "slim.teacher=unpruned", "slim.epochs=0"], "no recovery to distil"),
        (
            ["slim.ratio=0.5", "slim.init=scratch", "slim.scratch_epochs=2"]
            + ["train.epochs=5", "train.warmup_epochs=2"],
            r"train\.warmup_epochs \(2\).*raise slim\.scratch_epochs",
        ),
    ],
)
def test_bad_slim_config_is_refused_with_the_key(sets, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, sets)


def test_recovery_recipes_that_fit_are_accepted_and_survive_a_resolved_config(tmp_path):
    """A teacher distilling into a scratch network is a valid control; a budget with any
    importance picks the scratch architecture (the trained weights choose the widths); the
    resolved config a run writes (every key, defaults too) loads again."""
    from pipeline.config import dump_config

    for sets in (
        ["slim.ratio=0.5", "slim.teacher=unpruned", "slim.init=scratch", "slim.method=ce"],
        ["slim.macs=1e6", "slim.importance=taylor", "slim.init=scratch"],
        ["slim.latency_ms=0.5", "slim.init=scratch", "slim.epochs=0", "slim.scratch_epochs=2"],
        ["slim.ratio=0.5"],
    ):
        cfg = load_config(None, sets)
        path = tmp_path / "config.yaml"
        path.write_text(dump_config(cfg))
        assert load_config(path) == cfg
    cfg = load_config(None, ["slim.ratio=0.5", "slim.epochs=0"])
    assert cfg.slim.distils_from == "none" and cfg.slim.init == "pruned"
    assert not cfg.slim.recovery_epochs


@pytest.mark.parametrize(
    "sets, teacher",
    [
        ([], "none"),  # slim off: nothing to teach
        (["slim.ratio=0.5"], "unpruned"),  # the default recovery distils from the unpruned
        (["slim.macs=1e6", "slim.init=scratch"], "unpruned"),
        (["slim.ratio=0.5", "slim.epochs=0"], "none"),  # no recovery
        (["slim.ratio=0.5", "slim.teacher=none"], "none"),
        (["slim.ratio=0.5", "slim.teacher=unpruned"], "unpruned"),
    ],
)
def test_auto_teacher_is_the_unpruned_classifier_wherever_recovery_trains(sets, teacher):
    from pipeline.training.slimming import recipe

    cfg = load_config(None, sets)
    if not any(s.startswith("slim.teacher=") for s in sets):
        assert cfg.slim.teacher == "auto"
    assert cfg.slim.distils_from == teacher
    if cfg.slim.enabled and cfg.slim.recovery_epochs:
        assert recipe(cfg)["teacher"] == teacher


def test_recovery_fine_tunes_with_the_slim_schedule_and_no_kl_warm_up():
    from pipeline.training.slimming import recovery_config

    cfg = load_config(
        None,
        [
            "train.method=ama",
            "train.distill.kd_warmup_epochs=5",
            "train.distill.alpha=1.5",
            "slim.ratio=0.5",
            "slim.epochs=3",
        ],
    )
    train = recovery_config(cfg).train
    assert (train.method, train.epochs, train.lr) == ("ama", 3, cfg.slim.lr)
    assert train.distill.kd_warmup_epochs == 0 and train.distill.alpha == 1.5
    assert cfg.train.distill.kd_warmup_epochs == 5  # the run's own config is left as it was


def test_scratch_recovery_takes_its_own_epochs_rate_and_the_train_schedule():
    from pipeline.training.slimming import recovery_config

    base = ["train.method=ama", "train.distill.kd_warmup_epochs=2", "train.epochs=6"]
    base += ["train.schedule=step", "train.warmup_epochs=1", "train.lr=0.2", "slim.ratio=0.5"]
    base += ["slim.epochs=3", "slim.lr=0.01", "slim.schedule=cosine"]
    train = recovery_config(load_config(None, [*base, "slim.init=scratch"])).train
    assert (train.epochs, train.lr, train.schedule, train.warmup_epochs) == (3, 0.2, "step", 1)
    assert train.distill.kd_warmup_epochs == 2  # a head at its initial weights: the warm-up too
    sets = [*base, "slim.init=scratch", "slim.scratch_epochs=4", "slim.scratch_lr=0.05"]
    train = recovery_config(load_config(None, sets)).train
    assert (train.epochs, train.lr, train.schedule) == (4, 0.05, "step")
    train = recovery_config(load_config(None, base)).train  # fine-tuning, as before
    assert (train.epochs, train.lr, train.schedule, train.warmup_epochs) == (3, 0.01, "cosine", 0)


def test_the_slim_key_follows_the_int8_recipe_its_table_uses(tiny_cfg):
    from pipeline.runner import key_of

    base = key_of("slim", tiny_cfg, {}, "fp")
    other = tiny_cfg.model_copy(deep=True)
    other.export.int8.calibration = "percentile"
    assert key_of("slim", other, {}, "fp") != base
    other = tiny_cfg.model_copy(deep=True)
    other.export.atol = 0.5  # not what the table measures
    assert key_of("slim", other, {}, "fp") == base


def test_the_compression_table_quantizes_with_the_runs_int8_recipe(tiny_overrides, tmp_path):
    from pipeline.data import build_data
    from pipeline.evaluation import measure_classifier

    torch.manual_seed(0)
    spec = model_spec("resnet18", "ce", width=0.125, num_classes=10)
    classifier = build_training_model(spec)[0].deployable()
    sets = [*tiny_overrides, "export.calibration_samples=32"]
    default = load_config(None, sets)
    data = build_data(default.data)
    recipes = {}
    for name, extra in (
        ("default", []),
        ("set", ["export.int8.calibration=percentile", "export.int8.activations=symmetric"]),
    ):
        row = measure_classifier(
            load_config(None, [*sets, *extra]), data, classifier, tmp_path / name
        )
        recipes[name] = row["int8"]["recipe"]
    assert (recipes["default"]["calibration"], recipes["default"]["activations"]) == (
        "minmax",
        "uint8, asymmetric",
    )
    assert (recipes["set"]["calibration"], recipes["set"]["activations"]) == (
        "percentile",
        "int8, symmetric",
    )


def test_slim_off_passes_the_trained_model_through_unchanged(tiny_overrides):
    from pipeline.artifacts import sha256_file
    from pipeline.runner import run_pipeline

    cfg = load_config(None, [*tiny_overrides, "train.epochs=1"])
    manifests = run_pipeline(cfg, only="train")
    manifests = run_pipeline(cfg, only="slim")
    train, slim = manifests["train"].folder, manifests["slim"].folder
    assert manifests["slim"].metrics == {"slimmed": False}
    for f in ("model.safetensors", "model.json"):
        assert sha256_file(train / f) == sha256_file(slim / f)


def test_slim_run_prunes_recovers_and_reports(tiny_overrides, one_thread):
    from pipeline.runner import run_pipeline

    sets = [
        *tiny_overrides,
        "model.width=0.25",
        "train.method=ama",
        "slim.ratio=0.5",
        "slim.epochs=1",
        "slim.round_to=4",
        "validate.sweep.enabled=false",
    ]
    cfg = load_config(None, sets)
    manifests = run_pipeline(cfg)
    sl = manifests["slim"].metrics
    c = sl["compression"]
    assert sl["slimmed"] and sl["recovery_method"] == "ama"
    assert c["slim"]["params"] < 0.5 * c["unpruned"]["params"]
    assert c["slim"]["macs"] == sl["pruning"]["after"]["macs"]
    assert sl["recovery"]["epochs"] == 1 and sl["recovery"]["method"] == "ama"
    # the pruned classifier is what ships: the prune stage proves it, export and validate use it
    pr = manifests["prune"].metrics
    assert pr["params_deployed"] == c["slim"]["params"] and pr["parity"]["max_abs_diff"] == 0.0
    assert manifests["export"].metrics["onnx"]["bytes"] < 0.6 * c["unpruned"]["fp32"]["onnx_bytes"]
    card = (manifests["export"].folder / "MODEL_CARD.md").read_text()
    assert f"{100 * sl['recovery']['test_top1']:.2f}%" in card  # the pruned model's own top-1
    report = (cfg.run_path / "report.md").read_text()
    assert "## Compression" in report and "slim INT8" in report
    assert "minmax calibration" in report  # the recipe the table's INT8 rows were made with
    assert c["slim"]["int8"]["recipe"]["calibration"] == "minmax"
    assert sl["recipe"] == {
        "init": "pruned",
        "method": "ama",
        "teacher": "unpruned",  # slim.teacher auto: the unpruned classifier teaches too
        "teacher_temperature": cfg.slim.teacher_temperature,
        "teacher_weight": cfg.slim.teacher_weight,
        "epochs": 1,
        "lr": cfg.slim.lr,
        "schedule": cfg.slim.schedule,
        "warmup_epochs": 0,
    }
    # a second run reuses every stage
    again = run_pipeline(cfg)
    assert again["slim"].key == manifests["slim"].key


def test_ce_recovery_drops_the_self_teacher(tiny_overrides, one_thread):
    from pipeline.runner import run_pipeline

    sets = [
        *tiny_overrides,
        "train.method=ama",
        "train.epochs=1",
        "slim.ratio=0.3",
        "slim.epochs=1",
        "slim.method=ce",
        "slim.round_to=4",
    ]
    cfg = load_config(None, sets)
    run_pipeline(cfg, only="train")
    run_pipeline(cfg, only="slim")
    manifests = run_pipeline(cfg, only="prune")
    assert manifests["slim"].metrics["recovery"]["params_aux"] == 0
    assert manifests["prune"].metrics["params_removed"] == 0


def test_unreachable_latency_budget_stops_with_the_closest_and_keeps_the_trained_model(
    tiny_overrides, one_thread
):
    """Measured with ONNX Runtime at every step; the error names the best latency reached, and
    the finished train stage stays for the next attempt."""
    from pipeline.runner import run_pipeline

    sets = [
        *tiny_overrides,
        "train.epochs=1",
        "slim.latency_ms=1e-6",
        "slim.max_ratio=0.1",
        "validate.latency.iters=10",
        "validate.latency.warmup=1",
    ]
    cfg = load_config(None, sets)
    run_pipeline(cfg, only="train")
    with pytest.raises(ConfigError, match=r"slim\.latency_ms=1e-06 ms cannot be reached.*at best"):
        run_pipeline(cfg)
    assert (cfg.run_path / "01_train" / "manifest.json").is_file()
    assert run_pipeline(cfg.model_copy(update={"slim": SlimConfig()}), only="slim")[
        "slim"
    ].metrics == {"slimmed": False}


def _initial_sha256(folder, fresh_seed: int | None = None, options=None) -> str:
    """The weights a recovery starting from the model in `folder` begins with: its own, or
    (`fresh_seed`) its architecture freshly initialised as `fit` does it."""
    from accelerate.utils import set_seed

    from pipeline.models.io import load_weights
    from pipeline.training.fit import weights_sha256
    from pipeline.training.model import fresh_training_model

    spec = read_spec(folder, "model")
    if fresh_seed is None:
        return weights_sha256(load_weights(build_training_model(spec)[0], folder, "model"))
    set_seed(fresh_seed)
    return weights_sha256(fresh_training_model(spec, options)[0])


def test_unpruned_teacher_distils_beside_the_recovery_method_and_is_never_saved(
    tiny_overrides, one_thread
):
    from safetensors.torch import load_file

    from pipeline.artifacts import read_jsonl
    from pipeline.runner import run_pipeline
    from pipeline.training.fit import weights_sha256
    from pipeline.training.model import load_deployable

    sets = [
        *tiny_overrides,
        "train.method=ama",
        "train.epochs=1",
        "slim.ratio=0.5",
        "slim.epochs=1",
        "slim.round_to=4",
        "slim.method=ce",
        "slim.teacher=unpruned",
        "slim.teacher_temperature=2.0",
        "slim.teacher_weight=0.5",
    ]
    cfg = load_config(None, sets)
    train = run_pipeline(cfg, only="train")["train"].folder
    slim = run_pipeline(cfg, only="slim")["slim"]
    rows = read_jsonl(slim.folder / "metrics.jsonl")
    assert rows and all(r["teacher_kd"] > 0 for r in rows)
    for r in rows:  # ce's own loss plus the teacher's term, each its own part
        assert r["loss"] == pytest.approx(r["ce"] + r["teacher_kd"], rel=1e-6)
    rec = slim.metrics["recovery"]
    teacher = rec["teacher"]
    assert (teacher["temperature"], teacher["weight"]) == (2.0, 0.5)
    assert teacher["folder"] == str(train)
    # frozen: the train stage's classifier before and after, batch-norm statistics included
    unpruned = weights_sha256(load_deployable(train))
    assert teacher["weights_sha256_start"] == teacher["weights_sha256_end"] == unpruned
    # never saved: the slim model holds the pruned network's tensors and nothing else
    pruned = slim.folder / "pruned"
    saved = load_file(str(slim.folder / "model.safetensors"))
    assert set(saved) == set(load_file(str(pruned / "model.safetensors")))
    assert rec["start"] == {"fresh": False, "initial_weights_sha256": _initial_sha256(pruned)}
    recipe = slim.metrics["recipe"]
    assert (recipe["method"], recipe["teacher"], recipe["init"]) == ("ce", "unpruned", "pruned")
    section = _compression({"slim": slim.metrics})  # the report says how it was recovered
    assert (
        "`ce` with the frozen unpruned classifier as teacher (T 2, weight 0.5)"
        in (section.blocks[0])
    )


def test_scratch_trains_the_pruned_architecture_from_fresh_seeded_weights(
    tiny_overrides, one_thread
):
    from safetensors.torch import load_file

    from pipeline.runner import run_pipeline
    from pipeline.training.slimming import recovery_config

    sets = [
        *tiny_overrides,
        "train.method=ama",
        "train.epochs=1",
        "slim.ratio=0.5",
        "slim.round_to=4",
        "slim.init=scratch",
        "slim.scratch_epochs=1",
        "slim.scratch_lr=0.05",
    ]
    cfg = load_config(None, sets)
    run_pipeline(cfg, only="train")
    slim = run_pipeline(cfg, only="slim")["slim"]
    pruned = slim.folder / "pruned"
    rec, recipe = slim.metrics["recovery"], slim.metrics["recipe"]
    assert recipe["init"] == "scratch" and recipe["method"] == "ama"
    assert (recipe["epochs"], recipe["lr"], recipe["schedule"]) == (1, 0.05, cfg.train.schedule)
    assert rec["epochs"] == 1
    start = rec["start"]
    assert start["fresh"] is True
    # not the pruned weights (the self-teacher's neither), but the seed's fresh network
    options = recovery_config(cfg).train.distill
    assert start["initial_weights_sha256"] != _initial_sha256(pruned)
    assert start["initial_weights_sha256"] == _initial_sha256(pruned, cfg.train.seed, options)
    assert start["initial_weights_sha256"] != _initial_sha256(pruned, cfg.train.seed + 1, options)
    # the pruned architecture: every tensor of the pruned network, at its shape
    saved = load_file(str(slim.folder / "model.safetensors"))
    want = load_file(str(pruned / "model.safetensors"))
    assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in want.items()}
    assert read_spec(slim.folder, "model").shapes == read_spec(pruned, "model").shapes
    text = _compression({"slim": slim.metrics}).blocks[0]
    assert "trained from scratch (the pruned architecture, fresh weights) by `ama`" in text
