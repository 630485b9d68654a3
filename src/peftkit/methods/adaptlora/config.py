"""AdaPtLoRA config (REFERENCE.md, from the seeds): task ``t`` runs with its prompt ``P_t`` (l_p x d)
in front of the input and, in every adapted layer, ``W + s_t B A`` with ``s_t = sigmoid(g_t)``."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...config import PeftConfig, check_choice, check_positive, check_positive_int, check_range
from ...errors import ConfigError

PROMPT_INITS = ("vocab", "random")


@dataclass
class AdaPtLoraConfig(PeftConfig):
    """Adaptive prompt + task-gated LoRA for multi-task training.

    Args:
        tasks: task names, in index order (e.g. ``["sst2", "e2e_family"]``); a batch names each
            row's task (``model(..., tasks=[...])``, a ``tasks`` column, or ``with model.task(name):``).
        num_virtual_tokens: ``l_p``, the length of each task's prompt.
        r, lora_alpha, lora_dropout: the shared LoRA ``B A`` (scale ``lora_alpha / r``).
        gate_init: initial gate logit of every (task, layer); 0 gives ``s_t = 0.5``.
        prompt_init: ``"vocab"`` (embeddings of random vocabulary tokens) or ``"random"`` (N(0, 1)).
        default_task: the task of rows given none (``None``: naming the task is required).
    """

    tasks: list[str] = field(default_factory=list)
    num_virtual_tokens: int = 10
    r: int = 8
    lora_alpha: float = 16
    lora_dropout: float = 0.0
    gate_init: float = 0.0
    prompt_init: str = "vocab"
    default_task: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if (
            not isinstance(self.tasks, list)
            or not self.tasks
            or not all(isinstance(t, str) and t for t in self.tasks)
        ):
            raise ConfigError("tasks", f"expected a non-empty list of task names, got {self.tasks!r}")
        if len(set(self.tasks)) != len(self.tasks):
            raise ConfigError("tasks", f"task names must be distinct, got {self.tasks}")
        check_positive_int("num_virtual_tokens", self.num_virtual_tokens)
        check_positive_int("r", self.r)
        check_positive("lora_alpha", self.lora_alpha)
        check_range("lora_dropout", self.lora_dropout, 0.0, 1.0)
        check_choice("prompt_init", self.prompt_init, PROMPT_INITS)
        if self.default_task is not None:
            self.task_index(self.default_task)

    def task_index(self, task: str | None) -> int:
        """The index of ``task`` (``None``: the default task); an unknown name is an error."""
        name = task if task is not None else self.default_task
        if name is None:
            raise ConfigError(
                "tasks",
                f"AdaPtLoRA needs the task of each row, one of {self.tasks}: pass tasks=[...] to the model, "
                "use `with model.task(name):`, or set default_task",
            )
        if name not in self.tasks:
            raise ConfigError("tasks", f"unknown task {name!r}; this adapter was trained on {self.tasks}")
        return self.tasks.index(name)
