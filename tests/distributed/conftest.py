"""A local Ray instance shared by the distributed tests (logical CPUs: actors request fractions)."""

import pytest

ray = pytest.importorskip("ray")


@pytest.fixture(scope="session")
def local_ray():
    ray.init(num_cpus=4, include_dashboard=False, configure_logging=False)
    yield ray
    ray.shutdown()
