"""The optimizer and learning-rate schedule every method shares (``model.optim``): each shipped config trains at
the rate it trained at before the methods shared one base module, and old spellings are refused naming the new."""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from expotion.cli.train import ExpotionCLI, run
from expotion.data.clips import ShardDataModule
from expotion.solvers.module import MethodModule
from expotion.solvers.optimization import Optimization, ScheduleError, warmup_updates

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "lightning_configs"
PER_EPOCH = 25  # updates per epoch of the runs below (the configs leave it to the data)

# Recorded from the two LightningModules as they were before they shared one base (ExpotionModule's flat lr,
# weight_decay, warmup_fraction, warmup_epochs, min_lr; ClipFlowModule's own Optimization): per config, the run's
# updates, AdamW's (betas, eps, weight decay), the sum of the rates of every update, and the rate of some updates;
# then the schedule of each shipped config (and combination of overlays).
TINY_CPU = (500, ((0.9, 0.999), 1e-08, 0.0), 0.753,
    {0: 0.00012,
     1: 0.00024,
     2: 0.00035999999999999997,
     5: 0.0007199999999999999,
     10: 0.00132,
     49: 0.0029811424963432586,
     50: 0.0029795419551040835,
     51: 0.002977876693906741,
     99: 0.0028239035270072052,
     125: 0.0026837107640945907,
     250: 0.0016238690182084987,
     375: 0.0004840776425613887,
     498: 1.3122828354905635e-07,
     499: 3.280742966310646e-08})
PAPER = (1000, ((0.9, 0.999), 1e-08, 0.0), 5.010000000000001,
    {0: 0.0002,
     1: 0.0004,
     2: 0.0006,
     5: 0.0012,
     10: 0.0022,
     49: 0.01,
     50: 0.01,
     51: 0.009999972660400536,
     99: 0.009934501067202117,
     250: 0.008945702546981968,
     500: 0.005412896727361663,
     750: 0.0016135921418712956,
     998: 1.0935809887702153e-07,
     999: 2.7339599464326627e-08})
OFFICIAL = (500, ((0.9, 0.999), 1e-08, 0.02), 2.5324500000000003,
    {0: 0.0002,
     1: 0.0004,
     2: 0.0006,
     5: 0.0012,
     10: 0.0022,
     49: 0.01,
     50: 0.01,
     51: 0.009999879371991703,
     99: 0.009713184391297118,
     125: 0.009336825748732971,
     250: 0.0059095584794513056,
     375: 0.0018682013320516302,
     498: 0.00010048250615394403,
     499: 0.00010012062800829601})
CLIP_FLOW_TINY = (500, ((0.9, 0.95), 1e-08, 0.01), 0.75,
    {0: 0.0,
     1: 0.00030000000000000003,
     2: 0.0006000000000000001,
     5: 0.0015,
     10: 0.003,
     49: 0.002953351883233973,
     50: 0.002950942294558544,
     51: 0.0029484730633283387,
     99: 0.00276235275831443,
     125: 0.002610416995612973,
     250: 0.0015480773663574831,
     375: 0.00045647617409477043,
     498: 1.2331698252110447e-07,
     499: 3.082956245092916e-08})
CLIP_FLOW_SMALL = (4160, ((0.9, 0.95), 1e-08, 0.1), 0.07279999999999999,
    {0: 0.0,
     1: 8.749999999999999e-09,
     2: 1.7499999999999998e-08,
     5: 4.375e-08,
     10: 8.75e-08,
     49: 4.2874999999999997e-07,
     50: 4.375e-07,
     51: 4.462499999999999e-07,
     99: 8.6625e-07,
     1040: 9.1e-06,
     2080: 1.82e-05,
     3120: 2.73e-05,
     4158: 1.3491865787349232e-08,
     4159: 3.3732915638656768e-09})
BEFORE = [
    (('tiny_cpu.yaml',), TINY_CPU),
    (('live_tiny.yaml',), TINY_CPU),  # tiny_cpu.yaml with the causal option: its schedule must not move
    (('paper.yaml',), PAPER),
    (('paper.yaml', 'musicgen_small.yaml'), PAPER),
    (('paper.yaml', 'musicgen_medium.yaml'), PAPER),
    (('paper.yaml', 'musicgen_large.yaml'), PAPER),
    (('paper.yaml', 'musicgen_large.yaml', 'ablations/face.yaml'), PAPER),
    (('paper.yaml', 'musicgen_large.yaml', 'ablations/face_synchformer.yaml'), PAPER),
    (('paper.yaml', 'musicgen_large.yaml', 'ablations/generated_prompt.yaml'), PAPER),
    (('paper.yaml', 'musicgen_large.yaml', 'ablations/generic_prompt.yaml'), PAPER),
    (('paper.yaml', 'musicgen_large.yaml', 'ablations/raft.yaml'), PAPER),
    (('paper.yaml', 'musicgen_large.yaml', 'ablations/synchformer.yaml'), PAPER),
    (('paper.yaml', 'musicgen_large.yaml', 'ddp_4gpu.yaml'), PAPER),
    (('paper.yaml', 'musicgen_large.yaml', 'official.yaml'), OFFICIAL),
    (('paper.yaml', 'musicgen_large.yaml', 'ablations/raft.yaml', 'official.yaml'), OFFICIAL),
    (('paper.yaml', 'official.yaml'), OFFICIAL),
    (('clip_flow_tiny.yaml',), CLIP_FLOW_TINY),
    (('clip_flow_small.yaml',), CLIP_FLOW_SMALL),
    (('clip_flow_small.yaml', 'clip_flow_no_motion.yaml'), CLIP_FLOW_SMALL),
]


class ParseOnly(ExpotionCLI):
    def instantiate_classes(self) -> None:
        pass


def parsed(files: tuple[str, ...]):
    args = [x for f in files for x in ("--config", str(CONFIGS / f))]
    return ParseOnly(None, ShardDataModule, run=False, args=args).config


def schedule(files: tuple[str, ...]) -> tuple[int, list[float], tuple, float]:
    """(updates, the rate of each, AdamW's settings, the clipping norm) of ``files`` as the module configures them."""
    cfg = parsed(files)
    trainer = cfg.trainer
    total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else trainer.max_epochs * PER_EPOCH
    param = torch.nn.Parameter(torch.zeros(1))
    module = SimpleNamespace(optim=Optimization.of(cfg.model.init_args.optim), trained_parameters=lambda: {"p": param},
                             trainer=SimpleNamespace(estimated_stepping_batches=total, num_training_batches=PER_EPOCH,
                                                     accumulate_grad_batches=1))
    configured = MethodModule.configure_optimizers(module)
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    rates = []
    for _ in range(total):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    group = optimizer.param_groups[0]
    return total, rates, (tuple(group["betas"]), group["eps"], group["weight_decay"]), module.optim.max_norm


def test_every_shipped_config_covered():
    covered = {f for files, *_ in BEFORE for f in files}
    experiments = CONFIGS / "experiments"  # experiment files list training configs; they are not one
    assert covered == {str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yaml") if experiments not in p.parents}


@pytest.mark.parametrize("files,before", BEFORE, ids=["+".join(b[0]) for b in BEFORE])
def test_every_config_trains_at_the_rate_it_trained_at_before(files, before):
    total, adam, summed, some = before
    got_total, rates, got_adam, max_norm = schedule(files)
    assert (got_total, got_adam) == (total, adam)
    assert {step: rates[step] for step in some} == pytest.approx(some, rel=1e-12, abs=1e-20)
    assert math.fsum(rates) == pytest.approx(summed, rel=1e-12)
    # the gradient norm: CLIP + flow clips at 1.0 (audiocraft's), Expotion leaves it to --trainer.gradient_clip_val
    assert max_norm == (1.0 if files[0].startswith("clip_flow") else 0.0)


def test_a_warmup_given_twice_is_refused_in_one_line_and_none_means_none():
    with pytest.raises(ScheduleError) as refused:
        warmup_updates(Optimization(warmup_steps=10, warmup_epochs=2), 100, 5)
    assert str(refused.value) == ("the learning-rate warmup is given twice, as warmup_steps (10) and warmup_epochs "
                                  "(2): keep one and set the other to null (e.g. --model.optim.warmup_steps=null)")
    assert warmup_updates(Optimization(), 100) == 0
    assert warmup_updates(Optimization(warmup_epochs=2), 100, 5) == 10
    assert warmup_updates(Optimization(warmup_fraction=0.05), 100) == 5


def test_a_warmup_in_epochs_longer_than_the_run_is_refused_unless_meant():
    optim = Optimization(lr=0.01, warmup_epochs=3)
    with pytest.raises(ScheduleError, match=r"warmup \(15 updates\) lasts the whole run \(10 updates\).*"
                                            r"lower --model.optim.warmup_epochs"):
        warmup_updates(optim, 10, 5)
    assert warmup_updates(Optimization(lr=0.01, warmup_epochs=3, whole_run_warmup=True), 10, 5) == 15
    assert warmup_updates(Optimization(lr=0.01, warmup_fraction=1.0), 10) == 10  # reached at the last update


@pytest.mark.parametrize("given,message", [
    (["--model.lr=0.1"], "the command line: --model.lr has moved: use --model.optim.lr"),
    (["--model.init_args.warmup_fraction", "0.1"],
     "the command line: --model.init_args.warmup_fraction has moved: use --model.init_args.optim.warmup_fraction"),
    (["--config", "OLD"], "OLD: model.min_lr has moved: use model.optim.min_lr"),
    (["--config", "CALLBACK"], "CALLBACK: expotion.callbacks.AdaptorExport has been renamed: use "
                               "expotion.solvers.callbacks.MethodExport"),
    (["--model.class_path=expotion.clipflow.training.ClipFlowModule"],
     "the command line: expotion.clipflow.training.ClipFlowModule has moved: use "
     "expotion.methods.clipflow.module.ClipFlowModule"),
    (["--trainer.callbacks+=expotion.solvers.callbacks.AdaptorExport"],
     "the command line: expotion.solvers.callbacks.AdaptorExport has been renamed: use "
     "expotion.solvers.callbacks.MethodExport"),
])
def test_old_spellings_are_refused_in_one_line_naming_the_new(tmp_path, capsys, given, message):
    old = tmp_path / "old.yaml"
    old.write_text("model:\n  adaptor: {n_adapted: 2}\n  min_lr: 0.001\n")
    callback = tmp_path / "callback.yaml"
    callback.write_text("trainer:\n  callbacks:\n    - class_path: expotion.callbacks.AdaptorExport\n")
    given = [str(old) if a == "OLD" else str(callback) if a == "CALLBACK" else a for a in given]
    args = ["fit", "--config", str(CONFIGS / "tiny_cpu.yaml"), *given]
    assert run(args) == 2
    assert capsys.readouterr().err.strip() == "error: " + message.replace("OLD", str(old)).replace("CALLBACK",
                                                                                                  str(callback))


def test_the_clip_flow_optim_keys_keep_their_spelling_and_a_users_own_module_keeps_its_options():
    cfg = ParseOnly(None, ShardDataModule, run=False,
                    args=["--config", str(CONFIGS / "clip_flow_tiny.yaml"), "--model.optim.max_norm=0.5",
                          "--model.optim.whole_run_warmup=true"]).config
    optim = Optimization.of(cfg.model.init_args.optim)
    assert (optim.lr, optim.max_norm, optim.whole_run_warmup, optim.warmup_from_zero) == (0.003, 0.5, True, True)
    from expotion.cli.train import check_renamed_options

    check_renamed_options(["fit", "--model.class_path=my_package.MyModule", "--model.lr=0.1"])  # not refused
