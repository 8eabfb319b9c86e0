#!/usr/bin/env bash
# The GPU check of train.distribution (issue 15), for an accelerator machine:
# on each backend, steps/s on 1 vs all devices and the 20-step equivalence
# (max |w_all - w_1| < 1e-5, exit 1 above). TF32 matmuls are switched off so
# that float32 means float32 (NVIDIA_TF32_OVERRIDE=0 for TensorFlow,
# jax_default_matmul_precision=highest for JAX).
#
#   bash benchmarks/gpu_check.sh            # on the accelerator machine
#   bash benchmarks/gpu_check.sh --dry      # the same path on 2 simulated CPU devices
#
# Each backend runs under `timeout` (BENCH_TIMEOUT seconds, default 240); the
# script's exit code is the first failure's.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export NVIDIA_TF32_OVERRIDE=0 JAX_DEFAULT_MATMUL_PRECISION=highest TF_CPP_MIN_LOG_LEVEL=3
status=0
for backend in ${BACKENDS:-jax tensorflow}; do
  echo "== $backend"
  KERAS_BACKEND=$backend timeout "${BENCH_TIMEOUT:-240}" \
    "$PY" -m benchmarks.distribution --real "$@" || { rc=$?; [ $status -eq 0 ] && status=$rc; }
done
exit $status
