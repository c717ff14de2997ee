#!/usr/bin/env bash
# GPU checks (<= 8 minutes on one GPU), one line per check:
#   1. the installed command: CoOp's tiny overlay through `lightning-prompts fit` on the GPU, in bf16-mixed and in
#      16-mixed (fp16 with its gradient scaler);
#   2. one recipe per folder, method and data module, and the recipes whose evaluation their folder's pick misses, with
#      its tiny overlay (one batch of fit; and `test` for the recipes the docs tell users to test untrained) with
#      accelerator gpu and bf16-mixed: the tests marked `gpu` in tests/test_recipes.py;
#   3. benchmarks/coop_step.py on CUDA: CoOp at 1,000 classes, batch 32, ViT-B/16, with our peak memory and whether
#      it runs in 16 GiB, and ours alone with OpenCLIP(gradient_checkpointing=True); CoOp and MaPLe at 100 classes,
#      batch 8, with each variant's dispatched operations; both
#      also time the padded shared-prefix pass and the pass without the shared prefix;
#   4. benchmarks/half_precision_weights.py on CUDA, batch 32: MaPLe, VPT-deep and CoOp at 1,000 classes on ViT-B/16
#      with bfloat16 against float32 frozen weights under bf16 autocast, with each step's peak memory.
# Exits 1 when any check failed.
# Run from the repository root with the project and its test extra installed (full logs of the recipe tests and the
# benchmark go to $DEVICE_CHECK_LOGS, default a temporary folder):
#   bash benchmarks/device_check.sh
set -uo pipefail
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('device:', torch.cuda.get_device_name(0), '| torch', torch.__version__)" || exit 1
scratch=$(mktemp -d)
logs=${DEVICE_CHECK_LOGS:-$scratch}
mkdir -p "$logs"
failed=0  # the exit status: 1 when any check failed
run() {  # name, then the command
  local name=$1; shift
  local start=$(date +%s)
  if output=$("$@" 2>&1); then
    echo "PASS  $name  ($(( $(date +%s) - start )) s)"
  else
    echo "FAIL  $name  ($(( $(date +%s) - start )) s): $(echo "$output" | grep -E 'error|Error' | tail -1)"
    failed=1
  fi
}
TINY_COOP=(--config recipes/coop/caltech101.yaml --config recipes/_tiny/clip.yaml --trainer.accelerator gpu
           --trainer.devices 1 --trainer.default_root_dir "$scratch")
run "command: CoOp tiny, gpu, bf16-mixed" lightning-prompts fit "${TINY_COOP[@]}" --trainer.precision bf16-mixed
run "command: CoOp tiny, gpu, 16-mixed"   lightning-prompts fit "${TINY_COOP[@]}" --trainer.precision 16-mixed
# every recipe family: -rA prints one PASSED/FAILED/SKIPPED line per recipe; --tb=line one line per error
python -m pytest tests/test_recipes.py -m gpu -q -rA --tb=line -p no:cacheprovider -n 8 > "$logs/recipes.log" 2>&1 \
  || failed=1
grep -E "^(PASSED|FAILED|ERROR|SKIPPED)|^/.*Error|(passed|failed|skipped) in" "$logs/recipes.log" | sed 's/^/RECIPE  /'
python benchmarks/coop_step.py --device cuda --batch 32 --classes 1000 --methods coop --rounds 3 --peak-memory \
  > "$logs/coop_step_1000.log" 2>&1 || failed=1
python benchmarks/coop_step.py --device cuda --batch 32 --classes 1000 --methods coop --rounds 1 --skip-reference \
  --skip-memory --peak-memory --gradient-checkpointing > "$logs/coop_step_1000_checkpointed.log" 2>&1 || failed=1
python benchmarks/coop_step.py --device cuda --batch 8 --maple-batch 8 --classes 100 --methods coop maple --rounds 3 --count-ops \
  > "$logs/coop_step_100.log" 2>&1 || failed=1
python benchmarks/half_precision_weights.py --device cuda --batch 32 --rounds 3 \
  > "$logs/half_precision_weights.log" 2>&1 || failed=1
for log in "$logs/coop_step_1000.log" "$logs/coop_step_1000_checkpointed.log" "$logs/coop_step_100.log" \
           "$logs/half_precision_weights.log"; do
  grep -vE "Warning|warn|^ *$" "$log" | sed 's/^/BENCH  /'
done
rm -rf "$scratch"
exit $failed
