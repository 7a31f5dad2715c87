"""The `sd15-random` models must be the real SD 1.5 architectures: same parameter counts as published."""
import pytest

from headsculpt_engine.models.sd15_architecture import (SD15_PARAMETERS_M, build_sd15_modules,
                                                        parameter_count_millions)


@pytest.mark.parametrize("name", sorted(SD15_PARAMETERS_M))
def test_parameter_counts_match_the_published_sizes(name):
    module = build_sd15_modules([name], device="meta")[name]
    assert parameter_count_millions(module) == pytest.approx(SD15_PARAMETERS_M[name], rel=0.005)
