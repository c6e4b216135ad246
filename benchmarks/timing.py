"""What every benchmark here shares: timing a call with the device synchronized, the devices to run on, and
the command line (``--devices``)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(device: torch.device, function: Callable[..., Any], *args, **kwargs) -> tuple[float, Any]:
    """(seconds, result) of ``function(*args, **kwargs)`` with the device synchronized before and after."""
    synchronize(device)
    start = time.perf_counter()
    result = function(*args, **kwargs)
    synchronize(device)
    return time.perf_counter() - start, result


def devices(names: str) -> Iterator[torch.device]:
    """The devices of a comma-separated list that exist here; prints a line for each one skipped."""
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    for name in names.split(","):
        if name == "cuda" and not torch.cuda.is_available():
            print("\ncuda: not available on this machine, skipped")
            continue
        yield torch.device(name)


def parser(doc: str) -> argparse.ArgumentParser:
    """The command line of a benchmark: its docstring as help, and ``--devices``."""
    result = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    result.add_argument("--devices", default="cpu,cuda", help="comma-separated; unavailable ones are skipped")
    return result
