"""User-facing errors: the CLI prints the message as one line and exits with code 2."""


class KdbenchError(Exception):
    """Bad input or missing resources the user can fix (unknown name, missing data, bad file)."""


class DivergenceError(RuntimeError):
    """A loss became NaN or Inf during training; the run is recorded as failed."""

    def __init__(self, epoch: int, step: str, loss_name: str, value: float):
        self.epoch, self.step, self.loss_name, self.value = epoch, step, loss_name, value
        super().__init__(f"loss '{loss_name}' of step '{step}' became {value} in epoch {epoch}")
