"""Run `tunesmith` under FSDP or DeepSpeed on CPU processes (gloo): the sharded tests' training script.

    accelerate launch --config_file X.yaml tests/sharded_cpu.py [--exit-after-checkpoint N] train ...

accelerate 1.15 turns an FSDP or DeepSpeed launch into sharding only when the processes have GPUs;
on CPU processes it quietly runs plain data parallelism over gloo (tunesmith refuses that launch
in one line: train/distributed.check_launch). torch's FSDP2 and DeepSpeed's ZeRO (with its CPU
accelerator) both run over gloo, so this script flips accelerate's state to the sharded type the
launch asked for, after accelerate has set everything else up: the rest (accelerate's prepare,
save_state / load_state, get_state_dict; FSDP2's fully_shard; DeepSpeed's engine) is theirs,
unchanged, and so is all of tunesmith. This is the documented replacement for the GPUs the suite
does not have (issue 15); on GPUs the same launch needs no such script.

`--exit-after-checkpoint N`: every process exits (code 9, no cleanup) right after checkpoint
step-N is written, as a kill would leave the run.
"""

from __future__ import annotations

import os
import sys


def _shard_on_cpu() -> None:
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__

    def init(self, mixed_precision=None, cpu=False, dynamo_plugin=None, deepspeed_plugin=None, fsdp_plugin=None,
             *args, **kwargs):
        original(self, mixed_precision, cpu, dynamo_plugin, deepspeed_plugin, fsdp_plugin, *args, **kwargs)
        if self.distributed_type != DistributedType.MULTI_CPU:
            return
        if fsdp_plugin is not None:  # what accelerate does for an FSDP launch on GPUs (state.py)
            self.distributed_type, self.fsdp_plugin = DistributedType.FSDP, fsdp_plugin
        elif deepspeed_plugin is not None:
            self.distributed_type, self._mixed_precision = DistributedType.DEEPSPEED, "no"
            deepspeed_plugin.set_mixed_precision("no")
            deepspeed_plugin.select(_from_accelerator_state=True)
            self.deepspeed_plugins = deepspeed_plugin
        PartialState._shared_state["distributed_type"] = self.distributed_type

    AcceleratorState.__init__ = init


def _exit_after_checkpoint(step: int) -> None:
    import importlib

    finetune = importlib.import_module("tunesmith.train.finetune")  # the module, not the function of that name

    save = finetune._save_checkpoint

    def save_then_exit(s, model, optimizer, scheduler, state):
        save(s, model, optimizer, scheduler, state)
        if state.step == step:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(9)

    finetune._save_checkpoint = save_then_exit


def main(argv: list[str]) -> None:
    _shard_on_cpu()
    if argv[:1] == ["--exit-after-checkpoint"]:
        _exit_after_checkpoint(int(argv[1]))
        argv = argv[2:]
    sys.argv = ["tunesmith", *argv]
    from tunesmith.cli.main import run

    run()


if __name__ == "__main__":
    main(sys.argv[1:])
