#!/usr/bin/env bash
# The real-data benchmark (experiment=fashion_mnist_bench): every registered mixer that trains a CNN, and vanilla,
# 3 seeds, on real Fashion-MNIST. Finished runs are skipped and an interrupted one resumes, so run
# it again until it is done; a mixer registered later joins by running this again (only its runs
# execute). Needs pip install "openmix-torch[parallel,eval]" (Hydra's joblib launcher; scikit-learn,
# whose digits are the out-of-distribution set). It trains one single-threaded run per CPU core at
# once, up to 8 (JOBS=N to change that): on 2 cores, the 63 runs take about 7 hours.
# After the 63 runs, the budget check trains (experiment=fashion_mnist_budget: vanilla, mixup and
# CutMix at 40 epochs, seed 0, about 1.5 core-hours more). Run folders, with their result rows,
# per-epoch metrics, final weights (model.pt) and evaluation (eval.json), land in
# benchmarks/results/fashion_mnist/ (committed as they land); then the evaluation of any run that
# lacks one, and the tables and plots in that folder (table.md; budget.md). A run another
# process is training (a sweep started twice, a worker of a killed sweep) is skipped, never shared.
#
#   bash benchmarks/fashion_mnist_bench.sh                  # the sweep, then the report
#   nohup bash benchmarks/fashion_mnist_bench.sh > /tmp/bench.log 2>&1 &
#   bash benchmarks/fashion_mnist_bench.sh --report-only    # tables and plots of the runs so far
set -euo pipefail

main() {  # one function, so bash reads the whole script before it runs (editing it mid-sweep is safe)
cd "$(dirname "$0")/.."
out=benchmarks/results/fashion_mnist
runs="${out}/fashion_mnist_bench"
if [ "${1:-}" != "--report-only" ]; then
  mixers=$(python - <<'PY'
# every registered mixer that trains the experiment's CNN (TransMix and SMMix read a ViT's attention)
import openmix
from openmix.model_mixer import trains_with
from openmix.models import create_model
cnn = lambda: create_model("small_convnet", num_classes=10, in_chans=1)
print(",".join(["vanilla", *(n for n in openmix.available() if trains_with(openmix.build(n, num_classes=10), cnn()))]))
PY
)
  cores=$(nproc)
  jobs="${JOBS:-$(( cores < 8 ? cores : 8 ))}"   # each run holds about 1.2 GB: at most 8 unless JOBS says
  if [ "${jobs}" -gt 1 ] && ! python -c "import hydra_plugins.hydra_joblib_launcher" 2>/dev/null; then
    echo "fashion_mnist_bench: one run at a time (pip install 'openmix-torch[parallel]' for ${jobs} at once)" >&2
    jobs=1
  fi
  launcher=()
  if [ "${jobs}" -gt 1 ]; then
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"   # one thread per run: the runs share the cores
    launcher=(hydra/launcher=parallel "hydra.launcher.n_jobs=${jobs}")
  fi
  openmix-train -m "${launcher[@]}" experiment=fashion_mnist_bench "seed=0,1,2" "mixer=${mixers}" "out_dir=${out}" "$@"
  # the budget check: the same recipe at 40 epochs, is the mixers' top-1 gap a short-budget effect?
  openmix-train -m "${launcher[@]}" experiment=fashion_mnist_budget seed=0 mixer=vanilla,mixup,cutmix "out_dir=${out}" "$@"
fi
openmix-eval "${runs}" --ood digits || true   # runs trained before eval.json existed (a failure is printed, the rest goes on)
metrics=top1_final,top1_median10,ece,nll,corruption_top1,mce,fgsm_top1,pgd_top1,occlusion_top1,ood_auroc,time_ratio
openmix-report "${runs}" --metrics "${metrics}" --markdown "${out}/table.md" --csv "${out}/table.csv" \
  --plot "${out}/curves.png" --severity "${out}/severity.png" --reliability "${out}/reliability.png"
if [ -d "${out}/fashion_mnist_budget" ]; then
  openmix-report "${out}/fashion_mnist_budget" --metrics "${metrics}" --markdown "${out}/budget.md" \
    --csv "${out}/budget.csv" --plot "${out}/budget_curves.png"
fi
python - "${runs}" <<'PY'
# Sanity: vanilla within the range small CNNs reach on Fashion-MNIST. The dataset's own benchmark
# (zalandoresearch/fashion-mnist README) lists 2-conv-layer nets of about 100k parameters at
# 90.3-92.5% test accuracy, trained longer; 10 epochs of a 45k-parameter net sit in its lower part.
import statistics, sys
from openmix.results import find_results
top1 = [r["top1_final"] for r in find_results(sys.argv[1]) if r["mixer"] == "vanilla" and r["top1_final"] is not None]
low, high = 89.5, 92.5
if top1:
    mean = statistics.fmean(top1)
    verdict = "within" if low <= mean <= high else "OUTSIDE"
    print(f"sanity: vanilla top-1 {mean:.2f}% over {len(top1)} seeds is {verdict} [{low}, {high}]% "
          "(small CNNs on Fashion-MNIST: 90.3-92.5% in the dataset's benchmark table)")
PY
}

main "$@"
