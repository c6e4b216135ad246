import pytest
import torch

from bnlib import models, runs, train


def _toy(n=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=generator), torch.randint(0, 3, (n,), generator=generator)


def _fit(seed):
    torch.manual_seed(seed)
    model = models.build("small_cnn", "batch", 1, 8, 3, width=4)
    x, y = _toy()
    history = train.fit(model, x, y, epochs=2, batch_size=16, lr=0.1, seed=seed, eval_sets={"train": (x, y)},
                        progress=False)
    return model, history


def test_same_seed_same_numbers():
    (m1, h1), (m2, h2) = _fit(3), _fit(3)
    assert h1.records == h2.records
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    _, h3 = _fit(4)
    assert h3.records != h1.records


def test_fit_leaves_eval_mode_and_records_each_epoch():
    model, history = _fit(0)
    assert not model.training
    assert history.column("epoch") == [1.0, 2.0] and "train_acc" in history.records[0]


def test_predict_logits_bn_mode_is_explicit():
    model, _ = _fit(0)
    x, _ = _toy(32, seed=1)
    eval_logits = train.predict_logits(model, x, bn_mode="eval")
    train_logits = train.predict_logits(model, x, bn_mode="train", batch_size=16)
    assert not torch.allclose(eval_logits, train_logits)  # batch statistics differ from running ones
    model.eval()
    with torch.no_grad():
        assert torch.allclose(eval_logits, model(x))
        model.train()
        manual = torch.cat([model(x[:16]), model(x[16:])])
    assert torch.allclose(train_logits, manual, atol=1e-6)
    with pytest.raises(ValueError, match="'bn_mode'"):
        train.predict_logits(model, x, bn_mode="batch")


def test_predict_logits_restores_running_statistics():
    model, _ = _fit(0)
    x, _ = _toy(32, seed=2)
    before = {k: v.clone() for k, v in model.named_buffers()}
    train.predict_logits(model, x, bn_mode="train")
    for name, value in model.named_buffers():
        assert torch.equal(value, before[name]), name


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "constant"])
def test_learning_rate_schedules(schedule):
    rates = [train.learning_rate(s, 100, 1.0, schedule) for s in range(100)]
    assert max(rates) <= 1.0 + 1e-12 and min(rates) >= 0
    if schedule == "onecycle":
        assert rates[0] == pytest.approx(0.1) and rates[25] == pytest.approx(1.0) and rates[-1] < 0.02
    with pytest.raises(ValueError, match="'schedule'"):
        train.learning_rate(0, 10, 1.0, "step")


def test_resolve_device():
    assert train.resolve_device("cpu").type == "cpu"
    assert train.resolve_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'device'"):
            train.resolve_device("cuda")


def test_train_run_is_cached_and_deterministic(smoke_cfg):
    first = runs.train_run(smoke_cfg, "batch", seed=0, progress=False)
    again = runs.train_run(smoke_cfg, "batch", seed=0, progress=False)
    assert first.records == again.records
    assert {"inliers_acc", "canaries_in_acc", "canaries_out_acc", "test_acc"} <= set(first.records[0])
    assert first.canary_in_logits.shape == (smoke_cfg.n_canaries, 10)


ALLOCATOR_PROBE = r'''
import ctypes
libc = ctypes.CDLL("libc.so.6")
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def mapped_bytes_of_a_fresh_block(size):
    before = libc.mallinfo2().hblkhd
    block = libc.malloc(size)
    mapped = libc.mallinfo2().hblkhd - before
    libc.free(block)
    return mapped

size = 6 * 2 ** 20  # an activation-sized temporary
default = mapped_bytes_of_a_fresh_block(size)
from bnlib import train
tuned = train.tune_allocator()
print(default, mapped_bytes_of_a_fresh_block(size), tuned, train.tune_allocator())
'''


def test_tuned_allocator_serves_large_temporaries_from_the_heap_not_fresh_pages():
    """glibc maps a 6 MiB block afresh by default; after tune_allocator it comes from the reusable heap."""
    import ctypes.util
    import subprocess
    import sys

    if "libc.so" not in (ctypes.util.find_library("c") or ""):
        pytest.skip("not glibc")
    completed = subprocess.run([sys.executable, "-c", ALLOCATOR_PROBE], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    default, tuned_mapped, tuned, again = completed.stdout.split()
    assert int(default) >= 6 * 2 ** 20, "glibc's default should map a 6 MiB block with mmap"
    assert tuned == again == "True"
    assert int(tuned_mapped) == 0, "after tuning, the block must come from the heap"


def test_channels_last_is_within_float_rounding_of_the_plain_path_for_one_step():
    """The CPU layout option changes the summation order of the convolutions, not the arithmetic: one
    training step's weights agree to float32 rounding (the two paths then drift apart as SGD amplifies
    rounding over a run, which is why the plain path stays selectable)."""
    x, y = _toy(32)
    trained = {}
    for memory_format in train.MEMORY_FORMATS:
        torch.manual_seed(0)
        model = models.build("small_cnn", "batch", 1, 8, 3, width=4)
        train.fit(model, x, y, epochs=1, batch_size=32, lr=0.1, progress=False, memory_format=memory_format)
        trained[memory_format] = model.state_dict()
    for name, plain in trained["contiguous"].items():
        assert torch.allclose(trained["channels_last"][name].float(), plain.float(), rtol=1e-4, atol=1e-5), name
    with pytest.raises(ValueError, match="'memory_format'"):
        train.fit(model, x, y, epochs=1, batch_size=32, lr=0.1, progress=False, memory_format="nhwc")
