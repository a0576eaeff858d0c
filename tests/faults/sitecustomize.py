"""Faults injected from outside the scripts, in every process of a test run launched with PPO_DDP_FAULT (tests/helpers
puts this directory on PYTHONPATH then): the scripts hold no test seams.

  PPO_DDP_FAULT=R:U          rank R raises at update U, as its statistics are gathered (the one all_gather of an
                             update), while the other ranks wait in that collective
  PPO_DDP_FAULT=eval-crash   a separate evaluation process (--eval-json) fails at once with exit code 1
  PPO_DDP_FAULT=eval-hang    a separate evaluation process hangs
"""

import os
import sys
import time

FAULT = os.environ.get("PPO_DDP_FAULT", "")
EVALUATION = any(a.startswith("--eval-json") for a in sys.argv)

if FAULT == "eval-crash" and EVALUATION:
    print("RuntimeError: injected fault in the evaluation process", file=sys.stderr, flush=True)
    os._exit(1)
elif FAULT == "eval-hang" and EVALUATION:
    time.sleep(3600)
elif ":" in FAULT and os.environ.get("RANK") == FAULT.split(":")[0] and not EVALUATION:
    import torch.distributed as dist

    _all_gather, _calls, _update = dist.all_gather, [0], int(FAULT.split(":")[1])

    def _failing_all_gather(*args, **kwargs):
        _calls[0] += 1
        if _calls[0] == _update:
            raise RuntimeError(f"injected fault on rank {FAULT.split(':')[0]} at update {_update}")
        return _all_gather(*args, **kwargs)

    dist.all_gather = _failing_all_gather
