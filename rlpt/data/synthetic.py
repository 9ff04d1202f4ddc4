"""Built-in synthetic tasks with ground truth and difficulty knobs (no download, fully seeded).

- `arith`: "3+4=" -> "7". Knobs: operand range, number of operands, operators. Small enough that a random-init
  tiny model learns it from reward alone in minutes on CPU.
- `countdown`: reach a target from given numbers with + - * / (each number at most once). The target is built
  from a random expression over the numbers, so every instance is solvable.
"""

from __future__ import annotations

import random
from fractions import Fraction

from rlpt.config import ArithConfig, CountdownConfig
from rlpt.types import Prompt


def arith_prompts(cfg: ArithConfig, seed: int) -> list[Prompt]:
    """`cfg.num_prompts` expressions like "3+4=" (evaluated left to right with Python precedence)."""
    rng = random.Random(f"arith-{seed}")
    prompts = []
    for i in range(cfg.num_prompts):
        operands = [rng.randint(0, cfg.max_operand) for _ in range(cfg.num_operands)]
        ops = [rng.choice(cfg.ops) for _ in range(cfg.num_operands - 1)]
        expr = str(operands[0]) + "".join(op + str(x) for op, x in zip(ops, operands[1:]))
        answer = eval(expr, {"__builtins__": {}})  # noqa: S307 - expr is built here from ints and + - * only
        prompts.append(
            Prompt(
                uid=f"arith-{seed}-{i}",
                text=f"{expr}=",
                answer=str(answer),
                meta={"task": "arith", "operands": operands, "ops": ops},
            )
        )
    return prompts


def _random_expression(rng: random.Random, numbers: list[int]) -> tuple[str, Fraction] | None:
    """Combine a random non-empty subset of `numbers` with random operators; None if a division is not exact."""
    picked = rng.sample(numbers, rng.randint(2, len(numbers)))
    expr, value = str(picked[0]), Fraction(picked[0])
    for x in picked[1:]:
        op = rng.choice("+-*/")
        if op == "/" and (x == 0 or value % x != 0):
            return None
        value = {"+": value + x, "-": value - x, "*": value * x, "/": value / x}[op]
        expr = f"({expr}{op}{x})"
    return expr, value


def countdown_prompts(cfg: CountdownConfig, seed: int) -> list[Prompt]:
    rng = random.Random(f"countdown-{seed}")
    prompts: list[Prompt] = []
    while len(prompts) < cfg.num_prompts:
        numbers = [rng.randint(1, cfg.max_number) for _ in range(cfg.num_numbers)]
        made = _random_expression(rng, numbers)
        if made is None or not (1 <= made[1] <= cfg.max_target) or made[1].denominator != 1:
            continue
        expr, target = made[0], int(made[1])
        i = len(prompts)
        prompts.append(
            Prompt(
                uid=f"countdown-{seed}-{i}",
                text=f"Use {' '.join(map(str, numbers))} to make {target}:",
                answer=str(target),
                meta={"task": "countdown", "numbers": numbers, "target": target, "example_solution": expr},
            )
        )
    return prompts
