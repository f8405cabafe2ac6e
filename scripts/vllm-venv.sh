#!/usr/bin/env bash
# Idempotent: a separate venv (default .venv-vllm, gitignored) with vLLM 0.33.0's real Python
# classes for tests/vllm (the KV connector base class, the scheduler, Request, VllmConfig).
#
# Why not `pip install vllm==0.33.0`: its metadata pins torch==2.14.0 (a CUDA build from PyPI,
# several GB with the nvidia-* wheels) and drags CUDA-only packages (flashinfer-python,
# nvidia-cutlass-dsl[cu13], PyNvVideoCodec, tilelang, humming-kernels[cu13], ...). The PyTorch
# CPU index is not reachable from this host, so the venv takes the CPU build of torch 2.13.0
# that lies on disk (/opt/wheels) and vLLM with --no-deps, plus the exact pure-Python (or
# CPU-only) packages that importing vllm.config, vllm.v1.request,
# vllm.distributed.kv_transfer.kv_connector.{factory,v1.base} and
# vllm.v1.core.sched.scheduler needs, found by importing them until nothing was missing.
# vLLM's compiled vllm._C (built against torch 2.14 + CUDA) is not loaded by those modules;
# `pip check` reports torch 2.13.0+cpu vs torch==2.14.0 and the CUDA packages as missing.
# All pinned, all installed --no-deps, so the resolver never reaches for a CUDA wheel.
#
# Environment: VENV (default .venv-vllm), PYTHON (default python3.11, else python3),
# TORCH_INDEX (an extra index for the CPU torch, where it is not on disk).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-vllm}
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
say() { echo "vllm-venv: $*"; }
t0=$(date +%s)

VLLM=vllm==0.33.0
# The CPU build, never a CUDA one: here it is a file on disk (/opt/wheels, pip's find-links);
# elsewhere set TORCH_INDEX=https://download.pytorch.org/whl/cpu (unreachable from this host).
TORCH=torch==2.13.0+cpu
TORCH_INDEX=${TORCH_INDEX:-}
# What vLLM's connector/scheduler/request/config modules import, with their dependencies,
# at versions inside vllm 0.33.0's Requires-Dist ranges (transformers<5.21, fastapi<0.137, ...).
DEPS=(
  aiohappyeyeballs==2.7.1 aiohttp==3.14.5 aiosignal==1.4.0 annotated-doc==0.0.7 annotated-types==0.8.0
  anyio==4.16.0 apache-tvm-ffi==0.1.11 attrs==26.1.0 cachetools==8.0.2 cbor2==6.3.0
  certifi==2026.10.19.post1 charset-normalizer==3.5.3 click==8.5.1 cloudpickle==3.1.3 fastapi==0.136.3
  frozenlist==1.8.0 h11==0.16.0 hf-xet==1.8.0 httpcore2==2.16.2 httpx2==2.16.2 huggingface_hub==2.4.0
  idna==3.20 jiter==0.19.0 llguidance==1.7.6 markdown-it-py==4.3.0 mdurl==0.1.2 msgspec==0.23.0
  multidict==7.2.1 numpy==2.4.6 openai==3.57.0 openai-harmony==0.0.8 packaging==26.4
  partial-json-parser==0.2.1.1.post7 pillow==13.0.0 prometheus_client==0.26.0 propcache==0.5.4
  psutil==7.2.2 py-cpuinfo==9.0.0 pybase64==1.5.1 pydantic==2.14.4 pydantic_core==2.50.5
  Pygments==2.21.0 PyYAML==6.0.4 pyzmq==27.3.0 regex==2026.11.19 requests==2.34.2 rich==15.0.0
  safetensors==0.8.0 shellingham==1.5.4 sniffio==1.3.1 starlette==1.10.0 tokenizers==0.23.3
  tqdm==4.70.1 transformers==5.20.2 truststore==0.10.5 typer==0.29.2 typing-inspection==0.4.5
  urllib3==2.8.0 uvloop==0.23.0 xgrammar==0.2.8 yarl==1.25.1
  einops==0.8.2  # ModelConfig inspecting a Llama architecture (the tests build a real VllmConfig)
  # xgrammar's Requires-Dist names triton (1 GB); the imported modules never load it: left out.
  # For the tests: agentd's own runtime needs (its client and the in-process daemon).
  pytest==9.2.0 iniconfig==2.3.1 pluggy==1.7.0 pyroute2==0.9.7 nvidia-ml-py==13.615.71 google-re2==1.1.20251105
)
PROBE="import vllm.config, vllm.v1.request, vllm.v1.core.sched.scheduler, vllm.v1.kv_hints, \
vllm.distributed.kv_transfer.kv_connector.factory, vllm.distributed.kv_transfer.kv_connector.v1.base, \
einops, pytest, yaml, aiohttp, re2, pyroute2"

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -W ignore -c "$PROBE" >/dev/null 2>&1; then
  say "$VENV already imports vLLM's connector and scheduler classes: nothing to do"
  exit 0
fi
[ -x "$VENV/bin/python" ] || { say "creating $VENV with $PYTHON"; "$PYTHON" -m venv "$VENV"; }
PIP=("$VENV/bin/pip" install -q --disable-pip-version-check)
# pip's status survives the filter (pipefail); the filter drops this host's notes on absent mirrors
pipq() { "${PIP[@]}" "$@" 2>&1 | { grep -v "is ignored: it is neither" || true; }; }
say "installing $TORCH"
pipq ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} "$TORCH"
"$VENV/bin/python" -W ignore -c "import torch; assert torch.__version__.endswith('+cpu'), torch.__version__" \
  || { say "torch is not the CPU build: refusing to go on (a CUDA build is several GB)"; exit 1; }
say "installing $VLLM --no-deps (a 336 MB wheel)"
pipq --no-deps "$VLLM"
say "installing ${#DEPS[@]} pinned dependencies --no-deps"
pipq --no-deps "${DEPS[@]}"
say "checking the imports"
if ! out=$("$VENV/bin/python" -W ignore -c "$PROBE" 2>&1); then
  echo "$out" | tail -5
  say "vLLM's modules do not import"; exit 1
fi
say "done in $(( $(date +%s) - t0 )) s; $(du -sh "$VENV" | cut -f1) in $VENV"
say "run: PYTHONPATH=\$PWD $VENV/bin/python -m pytest -q -p no:cacheprovider tests/vllm"
