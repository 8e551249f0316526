"""Device plumbing: every extractor loader puts its model where it is told, and ``.to`` moves all of them.

On a CPU machine the 'meta' device stands in for a GPU: a parameter left behind on the CPU shows up.
The same checks on CUDA are in the ``gpu`` tests at the end.
"""
from dataclasses import replace

import pytest
import torch

from expotion.extractors.bank import AUDIO_TEXT, EXTRACTORS, STREAMS, VISUAL, Extractors
from expotion.precompute.pipeline import worker_device

META = torch.device("meta")


def devices(module: torch.nn.Module) -> set[torch.device]:
    return {p.device for p in module.parameters()} | {b.device for b in module.buffers()}


def test_every_registered_stream_loads_onto_the_device_it_is_given(tiny_profile_cfg):
    assert set(VISUAL) == set(STREAMS) == {"marlin", "synchformer", "raft", "clip", "farneback"} and EXTRACTORS == (*VISUAL, *AUDIO_TEXT)
    for stream in STREAMS.values():
        model = stream.load(stream.path(tiny_profile_cfg), META, tiny_profile_cfg)
        cpu = stream.load(stream.path(tiny_profile_cfg), torch.device("cpu"), tiny_profile_cfg)
        if stream.weight_key is None:  # OpenCV's Farneback: no weights, nothing to place
            assert devices(model) == devices(cpu) == set(), stream.name
            continue
        assert devices(model) == {META}, stream.name
        assert devices(cpu) == {torch.device("cpu")}, stream.name


def test_extractors_move_as_one_module_musicgen_included(tiny_profile_cfg):
    ex = Extractors(tiny_profile_cfg)
    assert set(ex.models) == {*VISUAL, "musicgen"} and ex.device == torch.device("cpu")
    ex.to(META)
    assert devices(ex) == {META}
    assert ex.musicgen.device == META  # audiocraft reads this to place its inputs
    assert devices(ex.musicgen.compression_model) == {META}


def test_moving_musicgen_takes_the_t5_audiocraft_keeps_outside_the_module_tree(tiny_profile_cfg):
    from expotion.musicgen.loading import MusicGenModule, load_musicgen

    musicgen = load_musicgen(tiny_profile_cfg.musicgen)
    cond = musicgen.lm.condition_provider.conditioners["description"]
    cond.__dict__["t5"] = torch.nn.Linear(4, 4)  # where audiocraft's T5Conditioner keeps its encoder
    cond.device = "cpu"  # and the device it tokenizes onto
    module = MusicGenModule(musicgen).to(META)
    assert devices(cond.t5) == {META} and str(cond.device) == "meta" and musicgen.device == META
    assert all(p.device == META for p in module.parameters())


def test_extractors_built_on_a_device_hold_every_model_there(tiny_profile_cfg):
    ex = Extractors(tiny_profile_cfg, VISUAL, device=META)
    assert devices(ex) == {META}
    shapes = ex.shapes()
    assert shapes["synchformer"] == (tiny_profile_cfg.synchformer.dim,) and shapes["raft"] == (2, 16, 16)
    assert shapes["clip"] == (17, 32) and shapes["farneback"] == tiny_profile_cfg.farneback.stored_shape


def test_a_weightless_stream_alone_still_has_a_device(tiny_profile_cfg):
    ex = Extractors(tiny_profile_cfg, ("farneback",))
    assert ex.device == torch.device("cpu") and not list(ex.parameters())
    assert ex.to(META).device == META


def test_worker_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [str(worker_device("cuda", k)) for k in range(3)] == ["cuda:0", "cuda:1", "cuda:0"]
    assert [str(worker_device("cuda:1", k)) for k in range(3)] == ["cuda:1"] * 3
    assert str(worker_device("cpu", 5)) == "cpu"


# ---- on a GPU ---------------------------------------------------------------------------------
@pytest.mark.gpu
def test_precompute_on_cuda_runs_every_extractor_there(small_demo, tiny_profile_cfg, tmp_path):
    import h5py
    from conftest import precompute_config

    from expotion.data.manifest import load_manifest
    from expotion.precompute.pipeline import ShardJob, process_shard

    cuda = torch.device("cuda:0")
    ex = Extractors(replace(tiny_profile_cfg, device="cuda:0"))
    assert devices(ex) == {cuda} and ex.musicgen.device == cuda
    recording = load_manifest(small_demo)[0]
    cfg = precompute_config(small_demo, tmp_path / "cache", replace(tiny_profile_cfg, device="cuda:0"))
    path = process_shard(ShardJob(recording.split, 0, (recording,)), ex, cfg)
    with h5py.File(path) as f:
        clip = next(iter(f["clips"].values()))
        assert set(cfg.names) <= set(clip)
    assert devices(ex) == {cuda}
