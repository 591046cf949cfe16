"""The end of a script run under `accelerate launch`."""

from accelerate import Accelerator


def end_distributed_run(accelerator: Accelerator) -> None:
    """Release the prepared (DDP-wrapped) models, then the process group, on every process together.

    Left to interpreter exit, their teardown can abort one process of a multi-process CPU run ("terminate
    called without an active exception") or hang it. Drop the caller's own references to the prepared
    models (a trainer, for instance) before calling this.

    Args:
        accelerator (`accelerate.Accelerator`): the accelerator that prepared the models.
    """
    accelerator.wait_for_everyone()
    accelerator.free_memory()
    accelerator.end_training()
