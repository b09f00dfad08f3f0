#!/usr/bin/env bash
# The project's figures on one CUDA GPU in bf16, about 8 minutes on an H200. Every result goes to a Markdown file in
# $RESULTS (default benchmarks/results/gpu/) that the README's GPU tables take as they are:
#
#   encode.md         images/s and texts/s of the paper-size model (benchmarks/encode.py)
#   train_step.md     the 128-image cached step with the paper's towers and loss: time, peak GPU memory, SIGROT's
#                     share; each image once vs once per caption (benchmarks/train_step.py)
#   sigrot.md         our Sinkhorn vs POT's torch backend at N = 640 and 2048 (benchmarks/sigrot.py)
#   eval_scoring.md   retrieval_metrics vs one scoring pass (benchmarks/eval_scoring.py)
#   padding.md        the text tower's padded-token share and time before/after length grouping (benchmarks/padding.py)
#   train_small.md    300 steps of train.py with --small_towers, bf16 autocast, torch.compile, SDPA: finite losses?
#
#   bash benchmarks/gpu.sh            # on a machine with a CUDA GPU and the project installed (pip install -e .[dev])
#   bash benchmarks/gpu.sh --smoke    # tiny sizes on the CPU (fp32 where the CPU lacks fast bf16): checks every step
#
#   ONLY=sigrot,eval_scoring bash benchmarks/gpu.sh    # some steps only (names as above, train_small_check too)
#
# A step that fails is reported and the others still run; the exit status is the number of failed steps.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PYTHON=${PYTHON:-python}
SMOKE=0
[[ "${1:-}" == "--smoke" ]] && SMOKE=1
RESULTS=${RESULTS:-benchmarks/results/gpu}
if (( SMOKE )); then
    RESULTS=${SMOKE_RESULTS:-$(mktemp -d)}
    DEVICE=cpu
else
    DEVICE=cuda
    $PYTHON -c "import torch, sys; sys.exit(not torch.cuda.is_available())" || { echo "no CUDA device" >&2; exit 1; }
fi
mkdir -p "$RESULTS"
failed=0
step() {  # step NAME TIMEOUT_SECONDS COMMAND...: run it, log to $RESULTS/NAME.log, report
    local name=$1 limit=$2
    shift 2
    [[ -n "${ONLY:-}" && ",$ONLY," != *",$name,"* ]] && return
    local start=$SECONDS
    echo "=== $name ($(date -u +%H:%M:%S) UTC)"
    if timeout "$limit" "$@" >"$RESULTS/$name.log" 2>&1; then
        echo "    ok in $((SECONDS - start)) s"
    else
        echo "    FAILED (exit $?) after $((SECONDS - start)) s; last lines of $RESULTS/$name.log:"
        tail -n 15 "$RESULTS/$name.log" | sed 's/^/    /'
        failed=$((failed + 1))
    fi
}

if (( SMOKE )); then
    step encode 600 $PYTHON benchmarks/encode.py --device cpu --dtype bf16 --quick
    step train_step 900 $PYTHON benchmarks/train_step.py --device cpu --quick
    step sigrot 300 $PYTHON benchmarks/sigrot.py --device cpu --sizes 64 --repeats 1 --output "$RESULTS/sigrot.md"
    step eval_scoring 300 $PYTHON benchmarks/eval_scoring.py --smoke --output "$RESULTS/eval_scoring.md"
    step padding 300 $PYTHON benchmarks/padding.py --smoke --output "$RESULTS/padding.md"
    TRAIN_STEPS=4  # torch.compile takes minutes on a small CPU: left out of the smoke run
    TRAIN_OPTIONS=(--torch_compile false --use_cpu true --per_device_train_batch_size 8 --gradcache_chunk_size 4
                   --logging_steps 1)
else
    step encode 120 $PYTHON benchmarks/encode.py --device cuda --dtype bf16 --image-batch 256 --text-batch 512 \
        --warmup 2 --repeats 5 --output "$RESULTS/encode.md"
    step train_step 240 $PYTHON benchmarks/train_step.py --device cuda --dtype bf16 --output "$RESULTS/train_step.md"
    step sigrot 60 $PYTHON benchmarks/sigrot.py --device cuda --sizes 640 2048 --repeats 5 --output "$RESULTS/sigrot.md"
    step eval_scoring 60 $PYTHON benchmarks/eval_scoring.py --device cuda --images 20000 --captions 100000 \
        --output "$RESULTS/eval_scoring.md"
    step padding 60 $PYTHON benchmarks/padding.py --device cuda --dtype bf16 --output "$RESULTS/padding.md"
    TRAIN_STEPS=300
    TRAIN_OPTIONS=(--torch_compile true --use_cpu false --bf16 true --per_device_train_batch_size 64 \
        --gradcache_chunk_size 32 --logging_steps 10)
fi
# The demo's small towers on the demo corpus: bf16 autocast, torch.compile, SDPA attention, a few hundred steps.
step train_small 240 $PYTHON train.py configs/demo.yaml --output_dir "$RESULTS/train_small" \
    --max_steps "$TRAIN_STEPS" --eval_strategy no --save_strategy no \
    --load_best_model_at_end false --test_split "" --dataloader_num_workers 2 "${TRAIN_OPTIONS[@]}"
step train_small_check 60 $PYTHON benchmarks/check_training.py "$RESULTS/train_small.log" "$RESULTS/train_small/final" \
    --output "$RESULTS/train_small.md" --settings "$TRAIN_STEPS steps, ${TRAIN_OPTIONS[*]}"

echo "results in $RESULTS; $failed step(s) failed"
exit "$failed"
