"""Helpers shared by the benchmark scripts: timing, peak memory, the machine, subprocess workers, Markdown."""

import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

from viclip_ot.files import write_text

# ---- time ----------------------------------------------------------------------------------------------------


def synchronize(device):
    """Wait for queued accelerator work (a no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_call(function, device="cpu"):
    """Seconds one call of `function()` takes, accelerator work included; returns (seconds, result)."""
    synchronize(device)
    start = time.perf_counter()
    result = function()
    synchronize(device)
    return time.perf_counter() - start, result


def repeat_timing(function, warmup=1, repeats=3, device="cpu", label=None, cpu_times=None):
    """`warmup` untimed calls, then `repeats` timed ones; returns the list of seconds (report its median). The
    process's CPU seconds (user + system) of each timed call are appended to `cpu_times` when it is a list."""
    for index in range(warmup):
        seconds, _ = time_call(function, device)
        if label:
            print(f"  {label}: warm-up {index + 1}/{warmup} {seconds:.2f} s", flush=True)
    times = []
    for index in range(repeats):
        usage = cpu_usage()
        seconds, _ = time_call(function, device)
        cpu_seconds = sum(cpu_usage()[:2]) - sum(usage[:2])
        times.append(seconds)
        if cpu_times is not None:
            cpu_times.append(cpu_seconds)
        if label:
            print(f"  {label}: run {index + 1}/{repeats} {seconds:.2f} s (CPU {cpu_seconds:.2f} s)", flush=True)
    return times


def median(values):
    return statistics.median(values)


def spread(values):
    """'min-max' of a list of seconds, for the tables."""
    return f"{min(values):.2f}-{max(values):.2f}"


# ---- memory (Linux) ------------------------------------------------------------------------------------------


def memory_kib(field):
    """A field of /proc/self/status in KiB: `VmRSS` (resident now) or `VmHWM` (peak resident)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1])


def reset_peak_rss():
    """Reset the peak resident set size (VmHWM) to the current one; returns the current RSS in KiB."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    return memory_kib("VmRSS")


def cpu_usage():
    """(user CPU seconds, system CPU seconds, minor page faults) of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime, usage.ru_minflt


def gib(kib):
    return kib / 2**20


# ---- the machine -----------------------------------------------------------------------------------------------


def cpu_model():
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average():
    return " / ".join(f"{value:.1f}" for value in os.getloadavg())


def environment(device="cpu"):
    """One sentence on where and when a benchmark ran."""
    parts = [
        f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
        f"torch {torch.__version__}",
        f"CPU {cpu_model()} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)",
    ]
    if torch.device(device).type == "cuda":
        parts.append(f"GPU {torch.cuda.get_device_name(device)}")
    return ", ".join(parts)


# ---- workers in fresh processes ------------------------------------------------------------------------------


def run_worker(script, arguments):
    """Run `python script *arguments` in a fresh process (its stderr and progress lines pass through); the
    worker prints its result as the last stdout line, one JSON object."""
    process = subprocess.Popen(
        [sys.executable, str(script), *map(str, arguments)], stdout=subprocess.PIPE, text=True, bufsize=1
    )
    last = None
    for line in process.stdout:
        if line.startswith("{"):
            last = line
        else:
            print(line, end="", flush=True)
    if process.wait() != 0 or last is None:
        raise RuntimeError(f"worker {script} {' '.join(map(str, arguments))} failed (exit {process.returncode})")
    return json.loads(last)


# ---- output --------------------------------------------------------------------------------------------------


def write_results(path, text):
    """Write a results file atomically (never left half-written) and say so."""
    write_text(path, text)
    print(f"wrote {path}")


def markdown_table(headers, rows):
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# ---- random inputs for the paper-size model --------------------------------------------------------------------

CAPTION_TOKENS = (15, 30)  # PhoBERT tokens of a Vietnamese caption, <s> and </s> included


def random_captions(count, generator, vocab_size=64001, lengths=CAPTION_TOKENS, bos=0, eos=2, pad=1):
    """`input_ids` and `attention_mask` of `count` random captions whose lengths are drawn uniformly from
    `lengths` (inclusive), padded to the longest, as the processor pads a batch; ids avoid the special tokens 0-3."""
    sizes = torch.randint(lengths[0], lengths[1] + 1, (count,), generator=generator)
    input_ids = torch.full((count, int(sizes.max())), pad)
    attention_mask = torch.zeros_like(input_ids)
    for row, size in enumerate(sizes.tolist()):
        input_ids[row, :size] = torch.randint(4, vocab_size, (size,), generator=generator)
        input_ids[row, 0], input_ids[row, size - 1] = bos, eos
        attention_mask[row, :size] = 1
    return input_ids, attention_mask
