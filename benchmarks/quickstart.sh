#!/usr/bin/env bash
# The main job end to end on the embedded default: the mnist-pu scenario built from ../shared/data.
#
#   select -> expand -> distill -> evaluate, n_l = 10 labeled images per class, a slice of the
#   unlabeled pool (POOL=20000 items by default; POOL=100000 for all of it).
#
# Builds the scenario's PNG folders and trains the LeNet-5 teacher on first use (about 2 minutes),
# writes everything under runs/quickstart/ and prints the teacher/student table on stdout.
#
# SCENARIO=cifar-pu: the same job on natural images (issue 27; docs/benchmarks.md, "Natural images"):
# the pretrained CIFAR-10 ResNet-56 of ../shared/models/resnet-cifar10 as the teacher (a model from
# the user's own code: --arch resnet.py:resnet56), 100 labeled CIFAR-10 images per class, the first
# SHARDS (4) of the 9 shards of the mixed pool (20,000 of its 41,420 Tiny ImageNet and CIFAR-100
# images, in seeded random order; prior 0.278) and a ResNet-20 student from the same file, distilled
# for EPOCHS epochs over the selection (12 under PRECISION=bfloat16, the default on a CPU with AMX or
# AVX-512 BF16; else 6 in float32), THREADS (1) thread (on a 2-core machine shared with other
# jobs one thread is the faster: select 44 s against 70 s on 3,000 images). Builds the cifar-pu
# roots (benchmarks/cifar_pu_data.py, seconds) on first use, writes under runs/quickstart-cifar/.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${PUCLI_BIN:-.venv/bin}

if [ "${SCENARIO:-mnist-pu}" = cifar-pu ]; then
  work=${WORK:-runs/quickstart-cifar}
  models=${PUCLI_SHARED_MODELS:-../shared/models}/resnet-cifar10
  mkdir -p "$work"
  root=$("$bin/python" benchmarks/cifar_pu_data.py)
  # The teacher is a bare state dict of the user's code: a copy beside a flat-form sidecar config
  # carries its preprocessing (docs/models.md), so every command below needs only --arch.
  teacher=$root/teacher/resnet56-4bfd9763.th
  if [ ! -f "$teacher" ]; then
    mkdir -p "$root/teacher"
    cp "$models/resnet56-4bfd9763.th" "$teacher.tmp" && mv "$teacher.tmp" "$teacher"
  fi
  [ -f "$root/teacher/resnet56-4bfd9763.config.json" ] || echo \
    '{"input_size": [3, 32, 32], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}' \
    > "$root/teacher/resnet56-4bfd9763.config.json"
  arch=$models/resnet.py:resnet56
  student_arch=$models/resnet.py:resnet20
  positive=$root/positive/nl100-seed0

  threads=(--threads "${THREADS:-1}")
  # bfloat16 autocast where the CPU has it natively (AMX or AVX-512 BF16): 1.62x faster distillation
  # (docs/benchmarks.md, "bfloat16 on the CPU"), so twice the epochs in the same time.
  if grep -qE 'amx_bf16|avx512_bf16' /proc/cpuinfo 2>/dev/null; then
    precision=${PRECISION:-bfloat16}; epochs=${EPOCHS:-12}
  else
    precision=${PRECISION:-float32}; epochs=${EPOCHS:-6}
  fi

  head -n "${SHARDS:-4}" "$root/pools/mixed/shards.txt" \
    | "$bin/pucli" select "$teacher" --arch "$arch" --positive "$positive" --unlabeled - --prior 0.278 \
        --out - --report "$work/select.report.json" "${threads[@]}" \
    | tee "$work/index.tsv" \
    | "$bin/pucli" expand "$teacher" --arch "$arch" --positive "$positive" --index - --out "$work/expanded" \
        --force "${threads[@]}"

  "$bin/pucli" distill "$teacher" --arch "$arch" --data "$work/expanded" --student "$student_arch" \
      --epochs "$epochs" --precision "$precision" --out "$work/student.safetensors" --force "${threads[@]}"
  "$bin/pucli" evaluate "$teacher" "$work/student.safetensors" --arch "$arch" --arch "$student_arch" \
      --test "$root/test" --report "$work/evaluate.report.json" "${threads[@]}"
  exit 0
fi

pool=${POOL:-20000}
work=${WORK:-runs/quickstart}
mkdir -p "$work"

root=$("$bin/python" benchmarks/mnist_pu_data.py)
teacher=$root/teacher/lenet5.safetensors
[ -f "$teacher" ] || "$bin/python" benchmarks/train_teacher.py --out "$teacher" >/dev/null
positive=$root/positive/nl10-seed0

# The pipeline form: the index streams from select into expand.
head -n "$pool" "$root/unlabeled.txt" \
  | "$bin/pucli" select --positive "$positive" --unlabeled - --teacher "$teacher" --prior 0.3 \
      --out - --report "$work/select.report.json" \
  | tee "$work/index.tsv" \
  | "$bin/pucli" expand --positive "$positive" --index - --teacher "$teacher" --out "$work/expanded" --force

"$bin/pucli" distill "$teacher" --data "$work/expanded" --student lenet5_half --out "$work/student.safetensors" --force
"$bin/pucli" evaluate "$teacher" "$work/student.safetensors" --data "$root/test" --report "$work/evaluate.report.json"
