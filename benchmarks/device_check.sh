#!/usr/bin/env bash
# GPU checks (<= 8 minutes on one GPU): every recipe family's tiny overlay with accelerator gpu and
# bf16-mixed, then benchmarks/coop_step.py on CUDA at 1,000 classes (batch 32, ViT-B/16, with our peak
# memory). One line per check. Run from the repository root with the project installed:
#   bash benchmarks/device_check.sh
set -uo pipefail
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('device:', torch.cuda.get_device_name(0), '| torch', torch.__version__)" || exit 1
run() {  # name, then the command
  local name=$1; shift
  local start=$(date +%s)
  if output=$("$@" 2>&1); then
    echo "PASS  $name  ($(( $(date +%s) - start )) s)"
  else
    echo "FAIL  $name  ($(( $(date +%s) - start )) s): $(echo "$output" | grep -E 'error|Error' | tail -1)"
  fi
}
GPU=(--trainer.accelerator gpu --trainer.devices 1 --trainer.precision bf16-mixed)
run "clip: CoOp tiny bf16"        lightning-prompts fit --config recipes/coop/caltech101.yaml --config recipes/_tiny/clip.yaml "${GPU[@]}"
run "clip: MaPLe tiny bf16"       lightning-prompts fit --config recipes/maple/dtd.yaml --config recipes/_tiny/clip.yaml "${GPU[@]}"
run "clip: CoPrompt tiny bf16"    lightning-prompts fit --config recipes/coprompt/dtd.yaml --config recipes/_tiny/clip.yaml "${GPU[@]}"
run "clip: DAPT tiny bf16"        lightning-prompts fit --config recipes/dapt/dtd.yaml --config recipes/_tiny/clip.yaml "${GPU[@]}"
run "clip: CLIP-Adapter tiny bf16" lightning-prompts fit --config recipes/clip_adapter/oxford_pets.yaml --config recipes/_tiny/clip.yaml "${GPU[@]}"
run "vit: VPT tiny bf16"          lightning-prompts fit --config recipes/vpt/cub.yaml --config recipes/_tiny/vit.yaml "${GPU[@]}"
run "continual: LAE tiny bf16"    lightning-prompts fit --config recipes/lae/cifar100_prefix.yaml --config recipes/_tiny/continual.yaml "${GPU[@]}"
run "text: PromptTuning tiny bf16" lightning-prompts fit --config recipes/prompt_tuning/sst2.yaml --config recipes/_tiny/text.yaml "${GPU[@]}"
run "graph: GPF tiny bf16"        lightning-prompts fit --config recipes/gpf/cora.yaml --config recipes/_tiny/graph.yaml "${GPU[@]}"
python benchmarks/coop_step.py --device cuda --batch 32 --classes 1000 --methods coop --rounds 2 --peak-memory 2>&1 \
  | grep -E "^(ratio|mem_ratio|peak_cuda|logits)" | sed 's/^/INFO  /'
python benchmarks/coop_step.py --device cuda --batch 8 --classes 100 --methods coop maple --rounds 2 2>&1 \
  | grep -E "^(ratio|mem_ratio|logits)" | sed 's/^/INFO  /'
