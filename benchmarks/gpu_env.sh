# Sourced by the run_gpu_*.sh device-call scripts: the machine's environment for one call.
# Installs the carried wheels (.whl/, from ../shared/device-wheels.sh) into /tmp/site, puts this tree and
# them on PYTHONPATH, keeps NVLink multicast off in every child process, names the carried tokenizer.
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1 RADIXSERVE_CACHE=/tmp/radixserve-cache
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # NVLink multicast off
export RADIXSERVE_TEST_TOKENIZER=${RADIXSERVE_TEST_TOKENIZER:-$PWD/.gpu_assets/tokenizer}

# One "name:flags" entry of a CONFIGS list (entries separated by ';'): sets $name, envs=() (the leading
# VAR=value words, environment for that run, e.g. RADIXSERVE_GC_FREEZE=0) and args=() (the rest).
parse_config() {
  local word
  name=${1%%:*}; envs=(); args=()
  for word in ${1#*:}; do
    if [[ ${#args[@]} -eq 0 && $word =~ ^[A-Z_]+= ]]; then envs+=("$word"); else args+=("$word"); fi
  done
}
