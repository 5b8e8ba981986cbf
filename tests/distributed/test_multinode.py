"""`mirrorl rl` on an existing Ray cluster of two nodes (a local multi-process cluster: `run.ray_address`)."""

import os
import subprocess
import sys

import pytest
from ray.cluster_utils import Cluster


@pytest.mark.slow
def test_rl_runs_on_a_two_node_cluster(tiny_policy_dir, tmp_path):
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    try:
        cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        out = tmp_path / "run"
        args = [f"rl.init_from={tiny_policy_dir}", f"run.output_dir={out}", "rl.iterations=2", "run.tensorboard=false",
                "data.num_rl=12", "rl.problems_per_iteration=2", "algo.num_samples=2", "rollout.max_new_tokens=16",
                "run.backend=ray", f"run.ray_address={cluster.address}", "distributed.network_interface=lo",
                "distributed.reward_workers=1"]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run([sys.executable, "-m", "mirrorl.cli", "rl", *args], capture_output=True, text=True,
                              env=env, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "ray: 2 learner ranks and 2 rollout workers (separate) on 2 node(s)" in done.stdout + done.stderr
        assert (out / "rl" / "final" / "model.safetensors").is_file()
        assert len((out / "rl_metrics.jsonl").read_text().splitlines()) == 2
    finally:
        cluster.shutdown()
