import sys
from pathlib import Path

import pytest
import torch.distributed as dist

# The scripts live in the repository root as single files; tests import them as modules.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@pytest.fixture
def machinery():
    """One script for what the machinery alone does (failures, nodes, checkpoints on disk): it is byte-identical
    in both (tests/test_template.py), and CI's time is better spent once."""
    return "ppo_ddp.py"


@pytest.fixture
def one_process_group():
    """A gloo process group of one rank (in memory), for calling the scripts' collectives in the test's process."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()
