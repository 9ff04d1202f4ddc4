"""actors.vllm_worker.PerReloadNoise: vLLM's two per-reload records are dropped, anything else of those loggers
passes (a real layer that failed to load must still be seen)."""

import logging

from actors.vllm_worker import PER_RELOAD_LOGGERS, PerReloadNoise, quiet_reloads


def record(msg: str, *args: object, level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord("vllm.x", level, __file__, 1, msg, args, None)


def test_drops_the_per_reload_lines_only():
    f = PerReloadNoise()
    assert not f.filter(record("Reloading and processing weights took %.2f seconds", 0.01, level=logging.INFO))
    assert not f.filter(record("%s: Failed to load weights", "RotaryEmbedding"))
    assert not f.filter(record("%s: Failed to load weights", "Llama3RotaryEmbedding"))
    assert f.filter(record("%s: Failed to load weights", "QKVParallelLinear"))
    assert f.filter(record("Following weights were not loaded from checkpoint: %s", {"lm_head.weight"}))


def test_installed_once_on_each_logger():
    quiet_reloads()
    quiet_reloads()
    for name in PER_RELOAD_LOGGERS:
        assert sum(isinstance(f, PerReloadNoise) for f in logging.getLogger(name).filters) == 1
