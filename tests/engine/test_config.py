import pytest

from headsculpt_engine.config import PRESETS, RunConfig, apply_overrides, preset_config


def test_paper_preset_holds_the_papers_numbers():
    cfg = preset_config("paper")
    assert (cfg.coarse.iterations, cfg.coarse.resolution, cfg.coarse.batch, cfg.coarse.lr) == (7000, 64, 4, 1e-3)
    assert cfg.coarse.betas == (0.9, 0.99) and cfg.coarse.weight_decay == 0.0
    assert (cfg.coarse.grid_levels, cfg.coarse.grid_features, cfg.coarse.grid_log2_table_size) == (16, 2, 19)
    assert cfg.coarse.mlp_hidden == (64, 64)
    assert (cfg.fine.iterations, cfg.fine.resolution, cfg.fine.lr, cfg.fine.t_range) == (5000, 512, 1e-2, (0.02, 0.5))
    assert cfg.guidance.guidance_scale == 100.0 and cfg.guidance.t_range == (0.02, 0.98)
    assert cfg.guidance.edit_scale == 0.6
    assert cfg.camera.radius == (1.0, 1.5) and cfg.camera.polar == (20.0, 110.0) and cfg.camera.fov_y == (30.0, 50.0)
    assert cfg.export.texture_size == 2048


def test_every_preset_builds_and_round_trips_through_json_dicts():
    for name in PRESETS:
        cfg = preset_config(name)
        assert RunConfig.from_dict(cfg.to_dict()) == cfg


def test_overrides_are_typed():
    cfg = apply_overrides(preset_config("tiny"), ["coarse.iterations=12", "guidance.t_range=0.1,0.4",
                                                  "models.cpu_offload=true", "guidance.back_view_policy=oval",
                                                  "camera.fov_y=20,30", "coarse.mlp_hidden=32,32,32"])
    assert cfg.coarse.iterations == 12 and cfg.guidance.t_range == (0.1, 0.4)
    assert cfg.models.cpu_offload is True and cfg.guidance.back_view_policy == "oval"
    assert cfg.camera.fov_y == (20.0, 30.0) and cfg.coarse.mlp_hidden == (32, 32, 32)


@pytest.mark.parametrize("override,message", [
    ("coarse.iterations", "not of the form"),
    ("nope.iterations=3", "Unknown setting section"),
    ("coarse.nope=3", "Unknown setting"),
    ("coarse.iterations=many", "not a valid int"),
    ("guidance.back_view_policy=sideways", "not a valid"),
])
def test_bad_overrides_say_what_is_wrong(override, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(preset_config("paper"), [override])


def test_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="Unknown preset 'fast'"):
        preset_config("fast")


def _generate_args(*extra: str):
    from headsculpt_engine.cli import build_parser

    return build_parser().parse_args(["generate", "--prompt", "a knight", *extra])


def test_models_the_user_names_win_over_what_the_preset_implies():
    from headsculpt_engine.commands.options import config_from_args
    from headsculpt_engine.config import DEFAULT_BASE_MODEL

    assert config_from_args(_generate_args("--preset", "tiny")).models.base == "tiny"
    assert config_from_args(_generate_args("--preset", "tiny", "--models", "default")).models.base == DEFAULT_BASE_MODEL
    assert config_from_args(_generate_args("--preset", "paper", "--models", "tiny")).models.base == "tiny"
    assert config_from_args(_generate_args("--preset", "draft")).models.base == DEFAULT_BASE_MODEL


def test_a_servers_models_win_over_what_a_jobs_preset_implies(tmp_path):
    from headsculpt_engine.config import DEFAULT_BASE_MODEL
    from headsculpt_engine.server.runner import ServerOptions, job_config

    request = {"kind": "generate", "prompt": "a knight", "seed": 1, "preset": "tiny"}
    assert job_config(request, ServerOptions(data_dir=tmp_path)).models.base == "tiny"
    assert job_config(request, ServerOptions(data_dir=tmp_path, models="default")).models.base == DEFAULT_BASE_MODEL
    paper = dict(request, preset="paper")
    assert job_config(paper, ServerOptions(data_dir=tmp_path)).models.base == DEFAULT_BASE_MODEL
    assert job_config(paper, ServerOptions(data_dir=tmp_path, models="tiny")).models.base == "tiny"


def test_back_view_policy_follows_each_paper_unless_chosen():
    """HeadSculpt predicts back views without the landmark ControlNet; HeadArtist's SSD draws the face
    contour on them."""
    cfg = preset_config("paper")
    assert cfg.guidance.back_view_policy == "auto" and cfg.guidance.back_views == "none"
    cfg.guidance.kind = "ssd"
    assert cfg.guidance.back_views == "oval"
    cfg.guidance.back_view_policy = "none"
    assert cfg.guidance.back_views == "none"
