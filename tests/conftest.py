import sys
from pathlib import Path

import pytest
import torch.distributed as dist

# The scripts live in the repository root as single files, imported by the tests as modules;
# what the tests share (helpers, the equivalence reference, a SLURM cluster on localhost, fault injection)
# is in tests/support.
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent / "support")]


@pytest.fixture
def operations():
    """One script for what the operations below the marked line alone do (failures, nodes, checkpoints on
    disk): they are byte-identical in every PPO script (tests/test_template.py), so once is enough."""
    return "ppo_ddp.py"


@pytest.fixture
def one_process_group():
    """A one-rank gloo process group (in memory), to call the scripts' collectives in the test's process."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()
