#!/usr/bin/env bash
# The main job end to end on the embedded default: the mnist-pu scenario built from ../shared/data.
#
#   select -> expand -> distill -> evaluate, n_l = 10 labeled images per class, a slice of the
#   unlabeled pool (POOL=20000 items by default; POOL=100000 for all of it).
#
# Builds the scenario's PNG folders and trains the LeNet-5 teacher on first use (about 2 minutes),
# writes everything under runs/quickstart/ and prints the teacher/student table on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${PUCLI_BIN:-.venv/bin}
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
