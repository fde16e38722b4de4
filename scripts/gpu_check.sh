#!/usr/bin/env bash
# A short end-to-end check of the CUDA path (device placement, AMP, sliding-window inference on the GPU) and
# the GPU speed ratios, for a machine with an accelerator. Expects the project's extra wheels in .whl/ when the
# machine lacks them (see the README), writes its log to ${OUT:-/tmp}/gpu_check.log.
set -euo pipefail
OUT="${OUT:-/tmp}"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD"
fi
export PYTHONUNBUFFERED=1
W=/tmp/gpu_check
rm -rf "$W"
{
  nvidia-smi --query-gpu=name,memory.total --format=csv
  python3 -c "import torch, monai; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'monai', monai.__version__)"
  python3 -m mosmos_components.cli demo_data "$W/roco" --kind roco --n 256
  python3 -m mosmos_components.cli demo_data "$W/btcv" --kind btcv --n 8
  t0=$(date +%s)
  python3 -m monai.bundle run --config_file "['bundles/mosmos_pretrain/configs/train.json','bundles/mosmos_pretrain/configs/demo.json']" \
    --bundle_root bundles/mosmos_pretrain --dataset_dir $W/roco/data --ckpt_dir $W/pre/models --output_dir $W/pre/eval \
    --max_epochs 4 --show_progress False
  t1=$(date +%s)
  python3 -m monai.bundle run --config_file "['bundles/btcv_seg/configs/train.json','bundles/btcv_seg/configs/demo.json']" \
    --bundle_root bundles/btcv_seg --dataset_dir $W/btcv --ckpt_dir $W/seg/models --output_dir $W/seg/eval \
    --pretrained_ckpt $W/pre/models/model.pt --max_epochs 20 --val_interval 10 --show_progress False
  t2=$(date +%s)
  python3 -m monai.bundle run --config_file "['bundles/btcv_seg/configs/train.json','bundles/btcv_seg/configs/demo.json','bundles/btcv_seg/configs/inference.json']" \
    --bundle_root bundles/btcv_seg --dataset_dir $W/btcv/RawData/Training/img/img0001.nii.gz --ckpt_dir $W/seg/models \
    --output_dir $W/seg/eval --pretrained_ckpt $W/pre/models/model.pt --show_progress False
  echo "GPU wall: pretrain 4 epochs $((t1 - t0)) s, btcv_seg 20 epochs $((t2 - t1)) s"
  cat $W/seg/eval/val_history.csv
  ls $W/seg/eval/predictions
  # the README's GPU columns: copy these into docs/benchmarks/ and run scripts/render_benchmarks.py
  python3 scripts/benchmark.py --size paper --repeats 10 --json "$OUT/gpu_paper.json"
  python3 scripts/benchmark.py --size tiny --repeats 10 --json "$OUT/gpu_tiny.json"
  python3 scripts/benchmark.py --only fastmode --model $W/seg/models --datalist $W/seg/eval/datalist.json \
    --json "$OUT/gpu_fastmode.json"
} 2>&1 | grep -vE "Epoch \[|it/s\]|resblocks\." | tee "$OUT/gpu_check.log"
