#!/usr/bin/env bash
# The real-data benchmark (experiment=fashion_mnist_bench): every registered mixer and vanilla,
# 3 seeds, on real Fashion-MNIST. Finished runs are skipped and an interrupted one resumes, so run
# it again until it is done (about 6 hours on 2 cores in all); a mixer registered later joins by
# running this again (only its runs execute). Run folders, with their result rows, per-epoch
# metrics and final weights, land in benchmarks/results/fashion_mnist/ (committed as they land).
#
#   bash benchmarks/fashion_mnist_bench.sh                  # the sweep
#   nohup bash benchmarks/fashion_mnist_bench.sh > /tmp/bench.log 2>&1 &   # in the background
set -euo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/results/fashion_mnist
mixers=$(python -c "import openmix; print(','.join(['vanilla', *openmix.available()]))")
openmix-train -m experiment=fashion_mnist_bench "seed=0,1,2" "mixer=${mixers}" "out_dir=${out}" "$@"
